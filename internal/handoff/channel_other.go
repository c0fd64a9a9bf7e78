//go:build !linux

package handoff

import (
	"os"
	"time"
)

// Channel is one end of the handover channel: on this system there is none (no
// upgrades), and every method fails.
type Channel struct{}

// NewChannel fails: there is no handover channel on this system.
func NewChannel(f *os.File) (*Channel, error) { f.Close(); return nil, ErrUnsupported }

// SocketPair fails: there is no handover channel on this system.
func SocketPair() (*Channel, *os.File, error) { return nil, nil, ErrUnsupported }

// OfferNext fails: there is no handover channel on this system.
func OfferNext(link int) (int, error) { return -1, ErrUnsupported }

// Send fails.
func (c *Channel) Send(m Message, timeout time.Duration) error { return ErrUnsupported }

// Receive fails.
func (c *Channel) Receive() (Message, error) { return Message{}, ErrUnsupported }

// Close does nothing.
func (c *Channel) Close() {}

// SetDeadline does nothing.
func (c *Channel) SetDeadline(t time.Time) error { return nil }

// SetReadDeadline does nothing.
func (c *Channel) SetReadDeadline(t time.Time) error { return nil }

// File fails.
func (c *Channel) File() (*os.File, error) { return nil, ErrUnsupported }
