// Package demopb is the example's gRPC service, written by hand: it stands in for
// the code protoc-gen-go and protoc-gen-go-grpc generate from a .proto file, so
// that the example builds with `go build` alone. A real service keeps its generated
// package instead; nothing in the server's upgrade recipe depends on this one.
//
// The service, as a .proto file would say it:
//
//	service Demo {
//	  // Info answers which process served the call.
//	  rpc Info(InfoRequest) returns (InfoReply);
//	  // Count streams N messages, one per server tick.
//	  rpc Count(CountRequest) returns (stream CountReply);
//	}
//
// Messages travel as JSON (content-subtype "json", see Codec) rather than protobuf.
package demopb

import (
	"context"
	"encoding/json"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
)

// Codec is the name of the codec the service's messages use: JSON, registered
// with gRPC by this package. The Client sends every call with it; the server
// picks it by the call's content-subtype.
const Codec = "json"

func init() { encoding.RegisterCodec(jsonCodec{}) }

type jsonCodec struct{}

func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }
func (jsonCodec) Name() string                       { return Codec }

// InfoRequest asks which process serves the call.
type InfoRequest struct{}

// InfoReply names the process that served a call.
type InfoReply struct {
	// PID is the server process's PID.
	PID int `json:"pid"`
	// Generation is its generation: 1 for the first process, n+1 for one
	// started by an upgrade of n.
	Generation int `json:"generation"`
}

// CountRequest asks for N messages.
type CountRequest struct {
	// N is how many messages to stream.
	N int `json:"n"`
}

// CountReply is one message of a Count stream.
type CountReply struct {
	// Seq counts the stream's messages from 1.
	Seq int `json:"seq"`
	// PID and Generation name the process that sent it.
	PID        int `json:"pid"`
	Generation int `json:"generation"`
	// Draining is true once that process has handed over to a new generation
	// (or was asked to stop) and finishes its streams.
	Draining bool `json:"draining"`
}

// DemoServer is what a server of the Demo service implements.
type DemoServer interface {
	Info(context.Context, *InfoRequest) (*InfoReply, error)
	Count(*CountRequest, grpc.ServerStreamingServer[CountReply]) error
}

// Full method names.
const (
	InfoMethod  = "/handover.example.Demo/Info"
	CountMethod = "/handover.example.Demo/Count"
)

// ServiceDesc describes the Demo service to a grpc.Server.
var ServiceDesc = grpc.ServiceDesc{
	ServiceName: "handover.example.Demo",
	HandlerType: (*DemoServer)(nil),
	Methods:     []grpc.MethodDesc{{MethodName: "Info", Handler: infoHandler}},
	Streams:     []grpc.StreamDesc{{StreamName: "Count", Handler: countHandler, ServerStreams: true}},
	Metadata:    "demopb (hand-written)",
}

// RegisterDemoServer registers srv as the Demo service of s.
func RegisterDemoServer(s grpc.ServiceRegistrar, srv DemoServer) {
	s.RegisterService(&ServiceDesc, srv)
}

func infoHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	in := new(InfoRequest)
	if err := dec(in); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return srv.(DemoServer).Info(ctx, in)
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: InfoMethod}
	return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
		return srv.(DemoServer).Info(ctx, req.(*InfoRequest))
	})
}

func countHandler(srv any, stream grpc.ServerStream) error {
	in := new(CountRequest)
	if err := stream.RecvMsg(in); err != nil {
		return err
	}
	return srv.(DemoServer).Count(in, &grpc.GenericServerStream[CountRequest, CountReply]{ServerStream: stream})
}

// Client calls the Demo service.
type Client struct {
	cc grpc.ClientConnInterface
}

// NewClient returns a Client that calls through cc.
func NewClient(cc grpc.ClientConnInterface) *Client { return &Client{cc: cc} }

// Info asks which process serves the call.
func (c *Client) Info(ctx context.Context, in *InfoRequest, opts ...grpc.CallOption) (*InfoReply, error) {
	out := new(InfoReply)
	opts = append([]grpc.CallOption{grpc.CallContentSubtype(Codec)}, opts...)
	if err := c.cc.Invoke(ctx, InfoMethod, in, out, opts...); err != nil {
		return nil, err
	}
	return out, nil
}

// Count opens a stream of in.N messages.
func (c *Client) Count(ctx context.Context, in *CountRequest, opts ...grpc.CallOption) (grpc.ServerStreamingClient[CountReply], error) {
	opts = append([]grpc.CallOption{grpc.CallContentSubtype(Codec)}, opts...)
	stream, err := c.cc.NewStream(ctx, &ServiceDesc.Streams[0], CountMethod, opts...)
	if err != nil {
		return nil, err
	}
	x := &grpc.GenericClientStream[CountRequest, CountReply]{ClientStream: stream}
	if err := x.SendMsg(in); err != nil {
		return nil, err
	}
	if err := x.CloseSend(); err != nil {
		return nil, err
	}
	return x, nil
}
