package pki_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/pki"
)

var fixedNow = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func newAuthority(t *testing.T) *pki.Authority {
	t.Helper()
	ca, err := pki.NewAuthority(pki.Config{Lifetime: time.Hour, Now: func() time.Time { return fixedNow }, JobName: "test"})
	if err != nil {
		t.Fatalf("NewAuthority: %v", err)
	}
	return ca
}

func mustIssue(t *testing.T, issue func() (pki.KeyPair, error)) pki.KeyPair {
	t.Helper()
	pair, err := issue()
	if err != nil {
		t.Fatalf("issuing: %v", err)
	}
	return pair
}

// handshake runs both sides of a TLS handshake over an in-memory connection and returns each
// side's error. Both configurations check certificates at fixedNow.
func handshake(t *testing.T, server, client *tls.Config) (serverErr, clientErr error) {
	t.Helper()
	server, client = server.Clone(), client.Clone()
	server.Time = func() time.Time { return fixedNow }
	client.Time = func() time.Time { return fixedNow }
	serverConn, clientConn := net.Pipe()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		conn := tls.Server(serverConn, server)
		err := conn.HandshakeContext(ctx)
		// Closing tells a client still waiting for the server's verdict (TLS 1.3 checks the client
		// certificate after the client thinks it is done) that the connection is gone.
		conn.Close()
		done <- err
	}()
	conn := tls.Client(clientConn, client)
	clientErr = conn.HandshakeContext(ctx)
	if clientErr == nil {
		// In TLS 1.3 a refused client certificate surfaces on the first read.
		_, clientErr = conn.Read(make([]byte, 1))
		// The server closes right after its handshake, so a clean end of stream means accepted.
		if errors.Is(clientErr, io.EOF) {
			clientErr = nil
		}
	}
	conn.Close()
	return <-done, clientErr
}

func TestMutualTLSHandshakeSucceedsWithinOneAuthority(t *testing.T) {
	ca := newAuthority(t)
	server := mustIssue(t, func() (pki.KeyPair, error) { return ca.IssueServer("amd64") })
	client := mustIssue(t, ca.IssueClient)
	serverConfig, err := ca.ServerTLSConfig(server)
	if err != nil {
		t.Fatal(err)
	}
	clientConfig, err := ca.ClientTLSConfig(client)
	if err != nil {
		t.Fatal(err)
	}
	serverErr, clientErr := handshake(t, serverConfig, clientConfig)
	if serverErr != nil || clientErr != nil {
		t.Fatalf("handshake failed: server: %v, client: %v", serverErr, clientErr)
	}
}

func TestServerRefusesClientOfAnotherAuthority(t *testing.T) {
	ca, other := newAuthority(t), newAuthority(t)
	server := mustIssue(t, func() (pki.KeyPair, error) { return ca.IssueServer("amd64") })
	foreignClient := mustIssue(t, other.IssueClient)
	serverConfig, err := ca.ServerTLSConfig(server)
	if err != nil {
		t.Fatal(err)
	}
	// The foreign client trusts our CA (so only the server's check can fail).
	clientConfig, err := other.ClientTLSConfig(foreignClient)
	if err != nil {
		t.Fatal(err)
	}
	clientConfig.RootCAs = ca.CertPool()
	serverErr, _ := handshake(t, serverConfig, clientConfig)
	var unknownAuthority x509.UnknownAuthorityError
	if !errors.As(serverErr, &unknownAuthority) {
		t.Fatalf("server accepted a client certificate from another CA (err %v)", serverErr)
	}
}

func TestServerRefusesClientWithoutCertificate(t *testing.T) {
	ca := newAuthority(t)
	server := mustIssue(t, func() (pki.KeyPair, error) { return ca.IssueServer("amd64") })
	serverConfig, err := ca.ServerTLSConfig(server)
	if err != nil {
		t.Fatal(err)
	}
	anonymous := &tls.Config{RootCAs: ca.CertPool(), ServerName: pki.ServerName}
	serverErr, _ := handshake(t, serverConfig, anonymous)
	if serverErr == nil {
		t.Fatal("server accepted a client without a certificate")
	}
}

func TestClientRefusesServerOfAnotherAuthority(t *testing.T) {
	ca, other := newAuthority(t), newAuthority(t)
	foreignServer := mustIssue(t, func() (pki.KeyPair, error) { return other.IssueServer("amd64") })
	client := mustIssue(t, ca.IssueClient)
	serverConfig, err := other.ServerTLSConfig(foreignServer)
	if err != nil {
		t.Fatal(err)
	}
	clientConfig, err := ca.ClientTLSConfig(client)
	if err != nil {
		t.Fatal(err)
	}
	_, clientErr := handshake(t, serverConfig, clientConfig)
	var unknownAuthority x509.UnknownAuthorityError
	if !errors.As(clientErr, &unknownAuthority) {
		t.Fatalf("client accepted a server certificate from another CA (err %v)", clientErr)
	}
}

func TestClientCertificateCannotServe(t *testing.T) {
	// A leaked client certificate must not let its holder pose as a builder.
	ca := newAuthority(t)
	client := mustIssue(t, ca.IssueClient)
	serverConfig, err := ca.ServerTLSConfig(client)
	if err != nil {
		t.Fatal(err)
	}
	clientConfig, err := ca.ClientTLSConfig(client)
	if err != nil {
		t.Fatal(err)
	}
	_, clientErr := handshake(t, serverConfig, clientConfig)
	if clientErr == nil {
		t.Fatal("client accepted a client certificate as a server certificate")
	}
}

func TestCertificatesExpireWithTheLifetime(t *testing.T) {
	ca := newAuthority(t)
	server := mustIssue(t, func() (pki.KeyPair, error) { return ca.IssueServer("arm64") })
	cert := server.Certificate
	if got, want := cert.DNSNames, []string{pki.ServerName}; len(got) != 1 || got[0] != want[0] {
		t.Errorf("DNSNames = %v, want %v", got, want)
	}
	if !cert.NotBefore.Before(fixedNow) {
		t.Errorf("NotBefore %s is not before now %s: a builder with a slightly late clock would refuse it", cert.NotBefore, fixedNow)
	}
	if cert.NotAfter.Before(fixedNow.Add(time.Hour)) || cert.NotAfter.After(fixedNow.Add(2*time.Hour)) {
		t.Errorf("NotAfter %s is not about one hour (the lifetime) after %s", cert.NotAfter, fixedNow)
	}
	if !ca.NotAfter().Equal(cert.NotAfter) {
		t.Errorf("CA expires %s, leaf %s: they should match", ca.NotAfter(), cert.NotAfter)
	}
	roots := ca.CertPool()
	_, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: pki.ServerName, CurrentTime: fixedNow.Add(3 * time.Hour)})
	var invalid x509.CertificateInvalidError
	if !errors.As(err, &invalid) || invalid.Reason != x509.Expired {
		t.Errorf("verification after the lifetime: err = %v, want expired", err)
	}
}

func TestNegativeLifetimeIsRefused(t *testing.T) {
	if _, err := pki.NewAuthority(pki.Config{Lifetime: -time.Second}); err == nil {
		t.Fatal("NewAuthority accepted a negative lifetime")
	}
}

func TestWriteClientFilesModes(t *testing.T) {
	ca := newAuthority(t)
	client := mustIssue(t, ca.IssueClient)
	dir := filepath.Join(t.TempDir(), "certs", "job")
	files, err := pki.WriteClientFiles(dir, ca.CertPEM(), client)
	if err != nil {
		t.Fatalf("WriteClientFiles: %v", err)
	}
	assertMode(t, dir, 0o700|os.ModeDir)
	for path, want := range map[string][]byte{files.CA: ca.CertPEM(), files.Cert: client.CertPEM, files.Key: client.KeyPEM} {
		assertMode(t, path, 0o600)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%s does not hold what was written", path)
		}
	}
	if _, err := tls.LoadX509KeyPair(files.Cert, files.Key); err != nil {
		t.Errorf("written pair does not load: %v", err)
	}

	// A second write (a retried step) tightens a loosened directory and replaces loose files.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(files.Key, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := pki.WriteClientFiles(dir, ca.CertPEM(), client); err != nil {
		t.Fatalf("second WriteClientFiles: %v", err)
	}
	assertMode(t, dir, 0o700|os.ModeDir)
	assertMode(t, files.Key, 0o600)

	if err := pki.RemoveClientFiles(files); err != nil {
		t.Fatalf("RemoveClientFiles: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory still there after RemoveClientFiles: %v", err)
	}
	if err := pki.RemoveClientFiles(files); err != nil {
		t.Errorf("second RemoveClientFiles: %v", err)
	}
}

func TestRemoveClientFilesKeepsForeignFiles(t *testing.T) {
	ca := newAuthority(t)
	client := mustIssue(t, ca.IssueClient)
	dir := t.TempDir()
	files, err := pki.WriteClientFiles(dir, ca.CertPEM(), client)
	if err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(dir, "not-ours")
	if err := os.WriteFile(foreign, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pki.RemoveClientFiles(files); err != nil {
		t.Fatalf("RemoveClientFiles: %v", err)
	}
	if _, err := os.Stat(foreign); err != nil {
		t.Errorf("a file we did not write was removed: %v", err)
	}
}

func TestWriteClientFilesRefusesMissingParts(t *testing.T) {
	if _, err := pki.WriteClientFiles(t.TempDir(), nil, pki.KeyPair{}); err == nil {
		t.Fatal("WriteClientFiles accepted empty credentials")
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode() & (os.ModePerm | os.ModeDir); got != want {
		t.Errorf("%s: mode %v, want %v", path, got, want)
	}
}
