package h2

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// ClientPreface is what a client writes first on every HTTP/2 connection, before its
// SETTINGS frame (RFC 9113 section 3.4).
const ClientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// MaxFrameSize is the largest frame payload this client accepts: the protocol's
// default SETTINGS_MAX_FRAME_SIZE, which it never raises.
const MaxFrameSize = 16384

// frameHeaderLen is the length of a frame header (RFC 9113 section 4.1).
const frameHeaderLen = 9

// FrameType is a frame's type (RFC 9113 section 6).
type FrameType uint8

// Frame types.
const (
	FrameData         FrameType = 0x0
	FrameHeaders      FrameType = 0x1
	FramePriority     FrameType = 0x2
	FrameRSTStream    FrameType = 0x3
	FrameSettings     FrameType = 0x4
	FramePushPromise  FrameType = 0x5
	FramePing         FrameType = 0x6
	FrameGoAway       FrameType = 0x7
	FrameWindowUpdate FrameType = 0x8
	FrameContinuation FrameType = 0x9
)

var frameNames = [...]string{"DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS", "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION"}

// String returns the type's name in RFC 9113, such as "GOAWAY".
func (t FrameType) String() string {
	if int(t) < len(frameNames) {
		return frameNames[t]
	}
	return fmt.Sprintf("UNKNOWN_0x%x", uint8(t))
}

// Frame flags. FlagAck shares its bit with FlagEndStream: the first is for SETTINGS
// and PING, the second for DATA and HEADERS.
const (
	FlagEndStream  = 0x1
	FlagAck        = 0x1
	FlagEndHeaders = 0x4
	FlagPadded     = 0x8
	FlagPriority   = 0x20
)

// ErrCode is an error code of RST_STREAM and GOAWAY (RFC 9113 section 7).
type ErrCode uint32

// Error codes.
const (
	ErrCodeNo                 ErrCode = 0x0
	ErrCodeProtocol           ErrCode = 0x1
	ErrCodeInternal           ErrCode = 0x2
	ErrCodeFlowControl        ErrCode = 0x3
	ErrCodeSettingsTimeout    ErrCode = 0x4
	ErrCodeStreamClosed       ErrCode = 0x5
	ErrCodeFrameSize          ErrCode = 0x6
	ErrCodeRefusedStream      ErrCode = 0x7
	ErrCodeCancel             ErrCode = 0x8
	ErrCodeCompression        ErrCode = 0x9
	ErrCodeConnect            ErrCode = 0xa
	ErrCodeEnhanceYourCalm    ErrCode = 0xb
	ErrCodeInadequateSecurity ErrCode = 0xc
	ErrCodeHTTP11Required     ErrCode = 0xd
)

var errCodeNames = [...]string{"NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED"}

// String returns the code's name in RFC 9113, such as "NO_ERROR".
func (c ErrCode) String() string {
	if int(c) < len(errCodeNames) {
		return errCodeNames[c]
	}
	return fmt.Sprintf("UNKNOWN_ERROR_0x%x", uint32(c))
}

// Settings identifiers (RFC 9113 section 6.5.2).
const (
	SettingHeaderTableSize      = 0x1
	SettingEnablePush           = 0x2
	SettingMaxConcurrentStreams = 0x3
	SettingInitialWindowSize    = 0x4
	SettingMaxFrameSize         = 0x5
	SettingMaxHeaderListSize    = 0x6
)

// Frame is one HTTP/2 frame: its header's fields and its whole payload (padding
// included).
type Frame struct {
	Type     FrameType
	Flags    uint8
	StreamID uint32
	Payload  []byte
}

// String describes the frame for traces, e.g. "HEADERS stream=1 len=12
// flags=END_STREAM|END_HEADERS".
func (f Frame) String() string {
	var flags []string
	ack := f.Type == FrameSettings || f.Type == FramePing
	for _, fl := range []struct {
		bit  uint8
		name string
		ok   bool
	}{
		{FlagAck, "ACK", ack},
		{FlagEndStream, "END_STREAM", !ack && (f.Type == FrameData || f.Type == FrameHeaders)},
		{FlagEndHeaders, "END_HEADERS", f.Type == FrameHeaders || f.Type == FrameContinuation || f.Type == FramePushPromise},
		{FlagPadded, "PADDED", f.Type == FrameData || f.Type == FrameHeaders || f.Type == FramePushPromise},
		{FlagPriority, "PRIORITY", f.Type == FrameHeaders},
	} {
		if fl.ok && f.Flags&fl.bit != 0 {
			flags = append(flags, fl.name)
		}
	}
	s := fmt.Sprintf("%s stream=%d len=%d", f.Type, f.StreamID, len(f.Payload))
	if len(flags) > 0 {
		s += " flags=" + strings.Join(flags, "|")
	}
	if f.Type == FrameGoAway || f.Type == FrameRSTStream {
		if g, err := parseGoAwayOrReset(f); err == nil {
			s += " " + g
		}
	}
	return s
}

func parseGoAwayOrReset(f Frame) (string, error) {
	if f.Type == FrameRSTStream {
		if len(f.Payload) != 4 {
			return "", fmt.Errorf("h2: RST_STREAM of %d bytes", len(f.Payload))
		}
		return "code=" + ErrCode(binary.BigEndian.Uint32(f.Payload)).String(), nil
	}
	last, code, debug, err := parseGoAway(f)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("last_stream=%d code=%s debug=%q", last, code, debug), nil
}

// parseGoAway returns a GOAWAY frame's last-stream-id, error code and debug data.
func parseGoAway(f Frame) (last uint32, code ErrCode, debug string, err error) {
	if f.StreamID != 0 || len(f.Payload) < 8 {
		return 0, 0, "", fmt.Errorf("h2: malformed GOAWAY (stream %d, %d bytes)", f.StreamID, len(f.Payload))
	}
	last = binary.BigEndian.Uint32(f.Payload) & 0x7fffffff
	code = ErrCode(binary.BigEndian.Uint32(f.Payload[4:]))
	return last, code, string(f.Payload[8:]), nil
}

// ReadFrame reads one frame. A payload larger than MaxFrameSize is an error.
func ReadFrame(r io.Reader) (Frame, error) {
	var h [frameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return Frame{}, err
	}
	n := uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
	if n > MaxFrameSize {
		return Frame{}, fmt.Errorf("h2: %s frame of %d bytes, larger than %d", FrameType(h[3]), n, MaxFrameSize)
	}
	f := Frame{Type: FrameType(h[3]), Flags: h[4], StreamID: binary.BigEndian.Uint32(h[5:]) & 0x7fffffff, Payload: make([]byte, n)}
	if _, err := io.ReadFull(r, f.Payload); err != nil {
		return Frame{}, fmt.Errorf("h2: %s frame cut short: %w", f.Type, unexpectedEOF(err))
	}
	return f, nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// AppendFrame appends f in wire format to dst.
func AppendFrame(dst []byte, f Frame) []byte {
	n := len(f.Payload)
	dst = append(dst, byte(n>>16), byte(n>>8), byte(n), byte(f.Type), f.Flags)
	dst = binary.BigEndian.AppendUint32(dst, f.StreamID&0x7fffffff)
	return append(dst, f.Payload...)
}

// content returns the payload of a DATA or HEADERS frame without its padding and,
// for HEADERS, without its priority fields.
func (f Frame) content() ([]byte, error) {
	p := f.Payload
	pad := 0
	if f.Flags&FlagPadded != 0 {
		if len(p) < 1 {
			return nil, fmt.Errorf("h2: padded %s frame without a pad length", f.Type)
		}
		pad, p = int(p[0]), p[1:]
	}
	if f.Type == FrameHeaders && f.Flags&FlagPriority != 0 {
		if len(p) < 5 {
			return nil, fmt.Errorf("h2: HEADERS frame too short for its priority fields")
		}
		p = p[5:]
	}
	if pad > len(p) {
		return nil, fmt.Errorf("h2: %s frame with %d bytes of padding in %d", f.Type, pad, len(p))
	}
	return p[:len(p)-pad], nil
}

// settingsFrame returns a SETTINGS frame with the given identifier and value pairs.
func settingsFrame(pairs ...uint32) Frame {
	var p []byte
	for i := 0; i+1 < len(pairs); i += 2 {
		p = binary.BigEndian.AppendUint16(p, uint16(pairs[i]))
		p = binary.BigEndian.AppendUint32(p, pairs[i+1])
	}
	return Frame{Type: FrameSettings, Payload: p}
}

// windowUpdate returns a WINDOW_UPDATE frame for stream (0: the connection).
func windowUpdate(stream uint32, increment int) Frame {
	return Frame{Type: FrameWindowUpdate, StreamID: stream, Payload: binary.BigEndian.AppendUint32(nil, uint32(increment))}
}
