module github.com/seed-a7250cfa/handover/tests/quic

go 1.26.0

replace github.com/seed-a7250cfa/handover => ../..

replace github.com/seed-a7250cfa/handover/quic => ../../quic

require (
	github.com/quic-go/quic-go v0.65.0
	github.com/seed-a7250cfa/handover v0.0.0-00010101000000-000000000000
	github.com/seed-a7250cfa/handover/quic v0.0.0-00010101000000-000000000000
)

require (
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/quic-go/qpack v0.6.0 // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.40.0 // indirect
)
