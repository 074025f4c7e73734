package k8sprov

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/org/setup-ephemeral-buildkit/internal/pki"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Credentials are a job's TLS material: the CA certificate both sides trust, one server key pair
// per builder (for the Secret) and the job's client key pair (for files the caller writes with
// pki.WriteClientFiles). The CA's private key is not kept: nothing may be signed later.
type Credentials struct {
	CACertPEM []byte
	Servers   map[platform.Platform]pki.KeyPair
	Client    pki.KeyPair
}

// IssueCredentials creates a CA for the plan's job, valid as long as the builders may live, and
// issues a server certificate for each platform's builder and the job's client certificate.
func IssueCredentials(p Plan) (*Credentials, error) {
	ca, err := pki.NewAuthority(pki.Config{
		Lifetime: p.Options.MaxLifetime,
		Now:      func() time.Time { return p.CreatedAt },
		JobName:  string(p.Key),
	})
	if err != nil {
		return nil, fmt.Errorf("issuing credentials for job %s: %w", p.Key, err)
	}
	creds := &Credentials{CACertPEM: ca.CertPEM(), Servers: map[platform.Platform]pki.KeyPair{}}
	for _, pl := range p.Platforms {
		pair, err := ca.IssueServer(pl.Slug())
		if err != nil {
			return nil, fmt.Errorf("issuing credentials for job %s: %w", p.Key, err)
		}
		creds.Servers[pl] = pair
	}
	creds.Client, err = ca.IssueClient()
	if err != nil {
		return nil, fmt.Errorf("issuing credentials for job %s: %w", p.Key, err)
	}
	return creds, nil
}

// ClientTLSConfig returns the client side as a tls.Config: the job's certificate, trusting only
// this job's CA, verifying pki.ServerName.
func (c *Credentials) ClientTLSConfig() (*tls.Config, error) {
	return pki.ClientTLSConfig(c.CACertPEM, c.Client)
}
