package pki_test

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/pki"
)

// The provisioner makes one CA per job, a server certificate per builder and one client
// certificate, and writes the client side to files for buildx and the BuildKit client.
func Example() {
	ca, err := pki.NewAuthority(pki.Config{Lifetime: 6 * time.Hour})
	if err != nil {
		panic(err)
	}
	server, err := ca.IssueServer("arm64")
	if err != nil {
		panic(err)
	}
	client, err := ca.IssueClient()
	if err != nil {
		panic(err)
	}
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	files, err := pki.WriteClientFiles(filepath.Join(dir, "buildkit"), ca.CertPEM(), client)
	if err != nil {
		panic(err)
	}
	fmt.Println(server.Certificate.DNSNames[0])
	fmt.Println(filepath.Base(files.CA), filepath.Base(files.Cert), filepath.Base(files.Key))
	// Output:
	// buildkitd.setup-ephemeral-buildkit.local
	// ca.pem cert.pem key.pem
}
