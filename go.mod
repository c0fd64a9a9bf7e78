module github.com/seed-a7250cfa/handover

go 1.26.0

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	golang.org/x/sys v0.50.0
)
