package k8sprov

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strings"

	bkclient "github.com/moby/buildkit/client"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// WorkerReport is what a builder says about itself over gRPC.
type WorkerReport struct {
	BuildkitVersion string
	Platforms       []ocispec.Platform
}

// ListWorkers connects to a builder over mutual TLS and asks BuildKit for its workers. The TLS
// handshake happens in the dialer with the job's in-memory credentials, so no file has to exist
// for the check; "h2" is offered because gRPC servers require it through ALPN.
func ListWorkers(ctx context.Context, endpoint string, tlsConfig *tls.Config) (WorkerReport, error) {
	c, err := newBuildkitClient(ctx, endpoint, tlsConfig)
	if err != nil {
		return WorkerReport{}, err
	}
	defer c.Close()
	workers, err := c.ListWorkers(ctx)
	if err != nil {
		return WorkerReport{}, fmt.Errorf("ListWorkers on %s: %w", endpoint, err)
	}
	var report WorkerReport
	for _, w := range workers {
		if report.BuildkitVersion == "" {
			report.BuildkitVersion = w.BuildkitVersion.Version
		}
		report.Platforms = append(report.Platforms, w.Platforms...)
	}
	if len(workers) == 0 {
		return report, fmt.Errorf("ListWorkers on %s: no workers", endpoint)
	}
	return report, nil
}

// newBuildkitClient is a BuildKit client of the builder at endpoint over mutual TLS.
func newBuildkitClient(ctx context.Context, endpoint string, tlsConfig *tls.Config) (*bkclient.Client, error) {
	address := strings.TrimPrefix(endpoint, "tcp://")
	cfg := tlsConfig.Clone()
	cfg.NextProtos = []string{"h2"}
	dialer := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		raw, err := d.DialContext(ctx, "tcp", address)
		if err != nil {
			return nil, err
		}
		conn := tls.Client(raw, cfg)
		if err := conn.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake with %s: %w", address, err)
		}
		return conn, nil
	}
	c, err := bkclient.New(ctx, "tcp://"+address, bkclient.WithContextDialer(dialer))
	if err != nil {
		return nil, fmt.Errorf("BuildKit client for %s: %w", endpoint, err)
	}
	return c, nil
}
