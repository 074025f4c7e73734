// Package pki is the per-job certificate authority: it creates, in memory, a short-lived CA, a
// server certificate for each BuildKit builder and a client certificate for the CI job, so that
// only the job that created a builder can talk to it (mutual TLS).
//
// Nothing here is stored beyond the job: the CA's private key never leaves the process, which is
// why a retried provisioning run creates a new CA (and new builders) instead of reusing old ones.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"
)

// ServerName is the DNS name in every builder's server certificate and the name clients verify.
// Builders are reached by pod IP, which is unknown when the certificates are made, so all builders
// share this fixed name and clients set it as the TLS server name (buildx's `servername`
// driver option, BuildKit's client.WithServerConfig).
const ServerName = "buildkitd.setup-ephemeral-buildkit.local"

// DefaultLifetime is how long certificates stay valid when Config.Lifetime is zero.
const DefaultLifetime = 6 * time.Hour

// clockSkewAllowance backdates NotBefore and extends NotAfter, so that builders on nodes whose
// clocks differ a little from the runner's still accept the certificates.
const clockSkewAllowance = 5 * time.Minute

// Config says how an Authority makes certificates. The zero value is usable.
type Config struct {
	// Lifetime is how long the CA and every certificate it issues stay valid, counted from Now.
	// Set it to the builders' maximum lifetime: no certificate should outlive its builder.
	// Zero means DefaultLifetime.
	Lifetime time.Duration
	// Now returns the current time; nil means time.Now. Tests fix it.
	Now func() time.Time
	// Rand is the source of serial numbers; nil means crypto/rand.Reader. Since Go 1.26 the
	// crypto packages ignore a custom reader for key generation and signatures (unless
	// GODEBUG=cryptocustomrand=1), so tests that need reproducible keys use
	// testing/cryptotest.SetGlobalRandom instead.
	Rand io.Reader
	// JobName goes into the certificates' subjects, so a certificate found later can be traced
	// to its job. Optional.
	JobName string
}

// Authority is a certificate authority for one job. It lives in memory only.
type Authority struct {
	cert      *x509.Certificate
	certPEM   []byte
	key       *ecdsa.PrivateKey
	notBefore time.Time
	notAfter  time.Time
	rand      io.Reader
	jobName   string
}

// KeyPair is a certificate with its private key, both PEM-encoded.
type KeyPair struct {
	// CertPEM is the certificate ("CERTIFICATE" block).
	CertPEM []byte
	// KeyPEM is the private key ("PRIVATE KEY" block, PKCS #8).
	KeyPEM []byte
	// Certificate is CertPEM parsed, for callers that inspect it.
	Certificate *x509.Certificate
}

// TLSCertificate returns the pair in the form crypto/tls uses.
func (k KeyPair) TLSCertificate() (tls.Certificate, error) {
	cert, err := tls.X509KeyPair(k.CertPEM, k.KeyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("loading key pair: %w", err)
	}
	return cert, nil
}

// NewAuthority creates a CA with a fresh ECDSA P-256 key, valid for cfg.Lifetime.
func NewAuthority(cfg Config) (*Authority, error) {
	if cfg.Lifetime < 0 {
		return nil, fmt.Errorf("creating certificate authority: lifetime %s is negative", cfg.Lifetime)
	}
	if cfg.Lifetime == 0 {
		cfg.Lifetime = DefaultLifetime
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	now := cfg.Now()
	a := &Authority{
		notBefore: now.Add(-clockSkewAllowance).UTC().Truncate(time.Second),
		notAfter:  now.Add(cfg.Lifetime + clockSkewAllowance).UTC().Truncate(time.Second),
		rand:      cfg.Rand,
		jobName:   cfg.JobName,
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), cfg.Rand)
	if err != nil {
		return nil, fmt.Errorf("creating certificate authority: generating key: %w", err)
	}
	serial, err := a.serialNumber()
	if err != nil {
		return nil, fmt.Errorf("creating certificate authority: %w", err)
	}
	template := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               a.subject("setup-ephemeral-buildkit job CA"),
		NotBefore:             a.notBefore,
		NotAfter:              a.notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs leaves only; a path length of zero forbids intermediate CAs under it.
		MaxPathLen:     0,
		MaxPathLenZero: true,
	}
	der, err := x509.CreateCertificate(cfg.Rand, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("creating certificate authority: self-signing: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("creating certificate authority: parsing own certificate: %w", err)
	}
	a.cert = cert
	a.certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	a.key = key
	return a, nil
}

// CertPEM returns the CA certificate, PEM-encoded: what both sides trust.
func (a *Authority) CertPEM() []byte { return append([]byte(nil), a.certPEM...) }

// Certificate returns the parsed CA certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// NotAfter returns when the CA and all its certificates expire.
func (a *Authority) NotAfter() time.Time { return a.notAfter }

// CertPool returns a pool holding only this CA, for tls.Config's RootCAs or ClientCAs.
func (a *Authority) CertPool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(a.cert)
	return pool
}

// IssueServer issues a server certificate for one builder. builder names the builder in the
// subject (for example "arm64"); the certificate is valid for ServerName only.
func (a *Authority) IssueServer(builder string) (KeyPair, error) {
	pair, err := a.issue(&x509.Certificate{
		Subject:     a.subject("buildkitd " + builder),
		DNSNames:    []string{ServerName},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return KeyPair{}, fmt.Errorf("issuing server certificate for builder %q: %w", builder, err)
	}
	return pair, nil
}

// IssueClient issues the job's client certificate, accepted by every builder of this CA.
func (a *Authority) IssueClient() (KeyPair, error) {
	pair, err := a.issue(&x509.Certificate{
		Subject:     a.subject("setup-ephemeral-buildkit client"),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return KeyPair{}, fmt.Errorf("issuing client certificate: %w", err)
	}
	return pair, nil
}

func (a *Authority) issue(template *x509.Certificate) (KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), a.rand)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generating key: %w", err)
	}
	serial, err := a.serialNumber()
	if err != nil {
		return KeyPair{}, err
	}
	template.SerialNumber = serial
	template.NotBefore = a.notBefore
	template.NotAfter = a.notAfter
	template.KeyUsage = x509.KeyUsageDigitalSignature
	template.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(a.rand, template, a.cert, &key.PublicKey, a.key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("signing: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return KeyPair{}, fmt.Errorf("parsing issued certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return KeyPair{}, fmt.Errorf("encoding key: %w", err)
	}
	return KeyPair{
		CertPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:      pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		Certificate: cert,
	}, nil
}

func (a *Authority) subject(commonName string) pkix.Name {
	name := pkix.Name{CommonName: commonName, Organization: []string{"setup-ephemeral-buildkit"}}
	if a.jobName != "" {
		name.OrganizationalUnit = []string{a.jobName}
	}
	return name
}

// serialNumber returns a random positive 127-bit serial, as RFC 5280 asks for unpredictable ones.
func (a *Authority) serialNumber() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	serial, err := rand.Int(a.rand, limit)
	if err != nil {
		return nil, fmt.Errorf("generating serial number: %w", err)
	}
	if serial.Sign() == 0 {
		return nil, errors.New("generating serial number: random source returned zero")
	}
	return serial, nil
}

// ServerTLSConfig returns what a builder does with its pair: present it and require a client
// certificate from this CA. BuildKit builds the same configuration from files; this one serves
// tests and in-process servers.
func (a *Authority) ServerTLSConfig(server KeyPair) (*tls.Config, error) {
	cert, err := server.TLSCertificate()
	if err != nil {
		return nil, fmt.Errorf("server TLS configuration: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    a.CertPool(),
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// ClientTLSConfig returns what the job does with its pair: present it and trust only builders
// of this CA under ServerName.
func (a *Authority) ClientTLSConfig(client KeyPair) (*tls.Config, error) {
	return ClientTLSConfig(a.certPEM, client)
}

// ClientTLSConfig returns the client side of a job's mutual TLS: present client, trust only the
// CA in caCertPEM, and verify ServerName.
func ClientTLSConfig(caCertPEM []byte, client KeyPair) (*tls.Config, error) {
	cert, err := client.TLSCertificate()
	if err != nil {
		return nil, fmt.Errorf("client TLS configuration: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caCertPEM) {
		return nil, errors.New("client TLS configuration: CA certificate does not parse")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      roots,
		ServerName:   ServerName,
		MinVersion:   tls.VersionTLS12,
	}, nil
}
