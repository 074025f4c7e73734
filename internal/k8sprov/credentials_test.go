package k8sprov

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"testing"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// TestSecretServesMutualTLSToTheJobsClient plays buildkitd with the files a pod mounts from the
// rendered Secret, and the job with Credentials.ClientTLSConfig, over an in-memory connection.
func TestSecretServesMutualTLSToTheJobsClient(t *testing.T) {
	plan := testPlan(t, Inputs{Platforms: "linux/amd64,linux/arm64"})
	creds, secret := renderTestSecret(t, plan)
	arm64 := platform.MustParse("linux/arm64")
	serverCert, err := tls.X509KeyPair(secret.Data[SecretKeyCert(arm64)], secret.Data[SecretKeyKey(arm64)])
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(secret.Data[SecretKeyCA]) {
		t.Fatal("CA in the Secret does not parse")
	}
	// What buildkitd builds from --tlscacert, --tlscert and --tlskey.
	serverConfig := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs}
	clientConfig, err := creds.ClientTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	// Certificates count from the plan's fixed creation time.
	now := func() time.Time { return fixedTime.Add(time.Minute) }
	serverConfig.Time, clientConfig.Time = now, now

	serverConn, clientConn := net.Pipe()
	serverDone := make(chan error, 1)
	go func() {
		conn := tls.Server(serverConn, serverConfig)
		err := conn.Handshake()
		if err == nil {
			_, err = conn.Write([]byte("ok"))
		}
		conn.Close()
		serverDone <- err
	}()
	conn := tls.Client(clientConn, clientConfig)
	defer conn.Close()
	reply, err := io.ReadAll(conn)
	if err != nil || string(reply) != "ok" {
		t.Fatalf("client: reply %q, err %v", reply, err)
	}
	if err := <-serverDone; err != nil {
		t.Fatalf("server: %v", err)
	}
}
