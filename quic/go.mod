module github.com/seed-a7250cfa/handover/quic

go 1.26.0

replace github.com/seed-a7250cfa/handover => ..

require (
	github.com/quic-go/quic-go v0.65.0
	github.com/seed-a7250cfa/handover v0.0.0-00010101000000-000000000000
	golang.org/x/sys v0.50.0
)

require (
	github.com/coreos/go-systemd/v22 v22.7.0 // indirect
	github.com/quic-go/qpack v0.6.0 // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
	golang.org/x/text v0.40.0 // indirect
)
