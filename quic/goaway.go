//go:build linux

package handoverquic

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"unsafe"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/quicvarint"
)

// An HTTP/3 server tells a client to move with a GOAWAY frame on its control
// stream (RFC 9114, section 5.2). quic-go's http3.Server sends it only from
// Shutdown, which from then on rejects (H3_REQUEST_REJECTED) every request stream
// that arrives: a request its client sent before it read the GOAWAY fails. RFC
// 9114 avoids that with a first GOAWAY that rejects nothing; quic-go does not send
// one, and http3.RawServerConn, which serves a connection's streams for an accept
// loop of the application's, opens the control stream without returning it. So
// this package finds that stream in the quic.Conn (the only stream the server has
// opened when NewRawServerConn returns), sends on it one GOAWAY with the largest
// client-initiated bidirectional stream ID, which promises that every request the
// client sent is processed, and keeps serving every request stream that arrives.
//
// Finding the stream reads fields of quic-go that are not exported, so it is
// checked against the quic-go in the build before any connection is served (see
// checkControlLayout): a quic-go whose layout differs makes ServeHTTP3 fail with
// errControlLayout, not serve connections it could not tell to go away.

// goAwayAll is the GOAWAY identifier that rejects nothing: the largest
// client-initiated bidirectional stream ID (2^62-4).
const goAwayAll = quic.StreamID(1<<62 - 4)

// firstServerUniStream is the ID of the first unidirectional stream a server
// opens: the control stream, for an http3.RawServerConn.
const firstServerUniStream = quic.StreamID(3)

// goAwayFrame encodes a GOAWAY frame (type 0x07) with identifier id.
func goAwayFrame(id quic.StreamID) []byte {
	b := quicvarint.Append(nil, 0x07)
	b = quicvarint.Append(b, uint64(quicvarint.Len(uint64(id))))
	return quicvarint.Append(b, uint64(id))
}

// errControlLayout says that the quic-go in the build does not keep its streams
// where this package looks for the HTTP/3 control stream.
var errControlLayout = errors.New("handoverquic: the quic-go in this build keeps its streams where this package cannot find the HTTP/3 control stream (made for quic-go v0.65); use that version, or update handoverquic")

// controlPath is where a quic.Conn keeps the streams it opened:
// Conn.streamsMap.outgoingUniStreams.{mutex, streams}.
type controlPath struct {
	streamsMap, outgoingUni, mutex, streams []int // field indexes
}

// checkControlLayout finds, once, the fields that lead from a quic.Conn to its
// outgoing unidirectional streams, and checks their types.
var checkControlLayout = sync.OnceValues(func() (controlPath, error) {
	var p controlPath
	conn := reflect.TypeFor[quic.Conn]()
	sm, ok := conn.FieldByName("streamsMap")
	if !ok || sm.Type.Kind() != reflect.Pointer || sm.Type.Elem().Kind() != reflect.Struct {
		return p, errControlLayout
	}
	out, ok := sm.Type.Elem().FieldByName("outgoingUniStreams")
	if !ok || out.Type.Kind() != reflect.Pointer || out.Type.Elem().Kind() != reflect.Struct {
		return p, errControlLayout
	}
	mu, ok := out.Type.Elem().FieldByName("mutex")
	if !ok || mu.Type != reflect.TypeFor[sync.RWMutex]() {
		return p, errControlLayout
	}
	streams, ok := out.Type.Elem().FieldByName("streams")
	if !ok || streams.Type.Kind() != reflect.Map || streams.Type.Key().Kind() != reflect.Int64 ||
		streams.Type.Elem() != reflect.TypeFor[*quic.SendStream]() {
		return p, errControlLayout
	}
	return controlPath{sm.Index, out.Index, mu.Index, streams.Index}, nil
})

// controlStream returns the control stream http3.Server.NewRawServerConn opened
// on conn: the server's first unidirectional stream, and its only one then.
func controlStream(conn *quic.Conn) (*quic.SendStream, error) {
	p, err := checkControlLayout()
	if err != nil {
		return nil, err
	}
	sm := reflect.ValueOf(conn).Elem().FieldByIndex(p.streamsMap)
	if sm.IsNil() {
		return nil, errControlLayout
	}
	out := sm.Elem().FieldByIndex(p.outgoingUni)
	if out.IsNil() {
		return nil, errControlLayout
	}
	m := out.Elem()
	mu := (*sync.RWMutex)(unsafe.Pointer(m.FieldByIndex(p.mutex).UnsafeAddr()))
	mu.RLock()
	defer mu.RUnlock()
	streams := m.FieldByIndex(p.streams)
	if streams.Len() != 1 {
		return nil, fmt.Errorf("handoverquic: %d unidirectional streams opened on a new HTTP/3 connection, want 1 (the control stream)", streams.Len())
	}
	iter := streams.MapRange()
	iter.Next()
	str := (*quic.SendStream)(unsafe.Pointer(iter.Value().Pointer()))
	if str == nil || str.StreamID() != firstServerUniStream {
		return nil, errControlLayout
	}
	return str, nil
}
