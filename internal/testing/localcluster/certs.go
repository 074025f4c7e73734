package localcluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certAuthority signs every certificate of the local cluster. One CA keeps the wiring simple:
// the API server, the kubelet and every client trust the same root.
type certAuthority struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// certRequest describes one leaf certificate.
type certRequest struct {
	commonName   string
	organization []string
	dnsNames     []string
	ips          []net.IP
	server       bool
	client       bool
}

func newCertAuthority(now time.Time) (*certAuthority, error) {
	return newCertAuthorityNamed("setup-ephemeral-buildkit local cluster CA", now, 10*24*time.Hour)
}

// newCertAuthorityNamed makes a CA with the given name, valid for validity from now.
func newCertAuthorityNamed(name string, now time.Time, validity time.Duration) (*certAuthority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	template := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("self-signing CA: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parsing CA: %w", err)
	}
	return &certAuthority{cert: cert, key: key}, nil
}

// issue signs a leaf certificate and returns PEM cert and key.
func (ca *certAuthority) issue(req certRequest, now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key for %s: %w", req.commonName, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, nil, fmt.Errorf("serial for %s: %w", req.commonName, err)
	}
	template := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: req.commonName, Organization: req.organization},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(10 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     req.dnsNames,
		IPAddresses:  req.ips,
	}
	if req.server {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if req.client {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, template, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("signing certificate for %s: %w", req.commonName, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding key for %s: %w", req.commonName, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func (ca *certAuthority) certPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// pkiFiles names the files the cluster's components read, all under <state>/pki.
type pkiFiles struct {
	Dir string
}

func (p pkiFiles) path(name string) string { return filepath.Join(p.Dir, name) }
func (p pkiFiles) CA() string              { return p.path("ca.crt") }
func (p pkiFiles) Cert(name string) string {
	return p.path(name + ".crt")
}
func (p pkiFiles) Key(name string) string { return p.path(name + ".key") }

// writePKI creates the CA, one certificate per identity the cluster needs, and the service
// account signing key.
func writePKI(files pkiFiles, nodeName string, nodeIP net.IP, now time.Time) error {
	if err := os.MkdirAll(files.Dir, 0o700); err != nil {
		return fmt.Errorf("creating %s: %w", files.Dir, err)
	}
	ca, err := newCertAuthority(now)
	if err != nil {
		return err
	}
	if err := os.WriteFile(files.CA(), ca.certPEM(), 0o600); err != nil {
		return fmt.Errorf("writing CA: %w", err)
	}
	leaves := map[string]certRequest{
		"apiserver": {
			commonName: "kube-apiserver",
			dnsNames:   []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips:        []net.IP{net.ParseIP("127.0.0.1"), nodeIP, net.ParseIP(serviceAPIIP)},
			server:     true,
		},
		// The API server authenticates to the kubelet with this identity; system:masters lets the
		// kubelet's webhook authorizer allow logs and exec.
		"apiserver-kubelet-client": {commonName: "kube-apiserver-kubelet-client", organization: []string{"system:masters"}, client: true},
		"admin":                    {commonName: "admin", organization: []string{"system:masters"}, client: true},
		"controller-manager":       {commonName: "system:kube-controller-manager", client: true},
		"scheduler":                {commonName: "system:kube-scheduler", client: true},
		// The Node authorizer and NodeRestriction admission only accept this exact naming.
		"kubelet-client": {commonName: "system:node:" + nodeName, organization: []string{"system:nodes"}, client: true},
		"kubelet-serving": {
			commonName: "system:node:" + nodeName,
			dnsNames:   []string{nodeName},
			ips:        []net.IP{nodeIP},
			server:     true,
		},
	}
	for name, req := range leaves {
		certPEM, keyPEM, err := ca.issue(req, now)
		if err != nil {
			return err
		}
		if err := os.WriteFile(files.Cert(name), certPEM, 0o600); err != nil {
			return fmt.Errorf("writing %s certificate: %w", name, err)
		}
		if err := os.WriteFile(files.Key(name), keyPEM, 0o600); err != nil {
			return fmt.Errorf("writing %s key: %w", name, err)
		}
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generating service account key: %w", err)
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return fmt.Errorf("encoding service account key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return fmt.Errorf("encoding service account public key: %w", err)
	}
	if err := os.WriteFile(files.Key("sa"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: saDER}), 0o600); err != nil {
		return fmt.Errorf("writing service account key: %w", err)
	}
	if err := os.WriteFile(files.path("sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		return fmt.Errorf("writing service account public key: %w", err)
	}
	return nil
}
