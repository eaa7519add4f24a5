package tcpbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// rawCodec moves []byte messages as they are, so the gRPC baseline pays for
// HTTP/2 framing and its stream machinery but not for protobuf.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	p, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("tcpbench: raw codec got %T, want *[]byte", v)
	}
	return *p, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("tcpbench: raw codec got %T, want *[]byte", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "ftvm-raw" }

// echoService is a hand-written service description: one bidirectional
// stream that answers each message with itself. No protoc needed.
var echoService = grpc.ServiceDesc{
	ServiceName: "ftvm.bench.Echo",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, stream grpc.ServerStream) error {
			var msg []byte
			for {
				if err := stream.RecvMsg(&msg); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := stream.SendMsg(&msg); err != nil {
					return err
				}
			}
		},
	}},
}

type grpcPinger struct {
	srv    *grpc.Server
	conn   *grpc.ClientConn
	stream grpc.ClientStream
	cancel context.CancelFunc
	msg    []byte
	reply  []byte
}

func newGRPCPinger(size int) (*grpcPinger, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}))
	srv.RegisterService(&echoService, nil)
	go srv.Serve(ln)
	conn, err := grpc.NewClient(ln.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
	if err != nil {
		srv.Stop()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := conn.NewStream(ctx, &echoService.Streams[0], "/ftvm.bench.Echo/Stream")
	if err != nil {
		cancel()
		conn.Close()
		srv.Stop()
		return nil, err
	}
	return &grpcPinger{srv: srv, conn: conn, stream: stream, cancel: cancel, msg: make([]byte, size)}, nil
}

func (p *grpcPinger) RoundTrips(n int, h *hdrhistogram.Histogram) error {
	for range n {
		t0 := time.Now()
		if err := p.stream.SendMsg(&p.msg); err != nil {
			return err
		}
		if err := p.stream.RecvMsg(&p.reply); err != nil {
			return err
		}
		h.RecordValue(int64(time.Since(t0)))
	}
	return nil
}

func (p *grpcPinger) Close() error {
	p.stream.CloseSend()
	p.cancel()
	p.conn.Close()
	p.srv.Stop()
	return nil
}
