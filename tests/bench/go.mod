module github.com/seed-a7250cfa/handover/tests/bench

go 1.26.0

require (
	github.com/cloudflare/tableflip v1.2.3
	github.com/facebookgo/grace v0.0.0-20180706040059-75cf19382434
	github.com/fvbock/endless v0.0.0-20170109170031-447134032cb6
	github.com/quic-go/quic-go v0.65.0
	github.com/seed-a7250cfa/handover v0.0.0-00010101000000-000000000000
	github.com/seed-a7250cfa/handover/tests/quic v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.50.0
)

require (
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/facebookgo/clock v0.0.0-20150410010913-600d898af40a // indirect
	github.com/facebookgo/ensure v0.0.0-20200202191622-63f1cf65ac4c // indirect
	github.com/facebookgo/freeport v0.0.0-20150612182905-d4adf43b75b9 // indirect
	github.com/facebookgo/httpdown v0.0.0-20180706035922-5979d39b15c2 // indirect
	github.com/facebookgo/stack v0.0.0-20160209184415-751773369052 // indirect
	github.com/facebookgo/stats v0.0.0-20151006221625-1b76add642e4 // indirect
	github.com/facebookgo/subset v0.0.0-20200203212716-c811ad88dec4 // indirect
	github.com/quic-go/qpack v0.6.0 // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
	golang.org/x/text v0.40.0 // indirect
)

replace github.com/seed-a7250cfa/handover => ../..

replace github.com/seed-a7250cfa/handover/tests/quic => ../quic

replace github.com/seed-a7250cfa/handover/quic => ../../quic
