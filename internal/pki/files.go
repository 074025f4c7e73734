package pki

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// File names WriteClientFiles uses, the names buildx's remote driver documentation uses too.
const (
	CAFileName   = "ca.pem"
	CertFileName = "cert.pem"
	KeyFileName  = "key.pem"
)

// ClientFiles are the paths of the job's client credentials on disk.
type ClientFiles struct {
	Dir  string
	CA   string
	Cert string
	Key  string
}

// WriteClientFiles writes the client side of the job's credentials (the CA certificate, the client
// certificate and its key) into dir, creating dir with mode 0700 if needed and each file with mode
// 0600: only the job's user may read the key. Existing files are replaced, which is what a retried
// step wants, since a retry has a new CA. An existing dir that others can read is tightened to
// 0700, because the key must not be readable through it.
func WriteClientFiles(dir string, caCertPEM []byte, client KeyPair) (ClientFiles, error) {
	if dir == "" {
		return ClientFiles{}, errors.New("writing client certificates: directory is empty")
	}
	if len(caCertPEM) == 0 || len(client.CertPEM) == 0 || len(client.KeyPEM) == 0 {
		return ClientFiles{}, fmt.Errorf("writing client certificates to %s: CA, certificate and key must all be set", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ClientFiles{}, fmt.Errorf("writing client certificates: %w", err)
	}
	// MkdirAll leaves an existing directory as it was (and the umask may have narrowed a new
	// one), so set the mode explicitly.
	if err := os.Chmod(dir, 0o700); err != nil {
		return ClientFiles{}, fmt.Errorf("writing client certificates: %w", err)
	}
	files := ClientFiles{
		Dir:  dir,
		CA:   filepath.Join(dir, CAFileName),
		Cert: filepath.Join(dir, CertFileName),
		Key:  filepath.Join(dir, KeyFileName),
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{files.CA, caCertPEM}, {files.Cert, client.CertPEM}, {files.Key, client.KeyPEM}} {
		if err := writePrivateFile(f.path, f.data); err != nil {
			return ClientFiles{}, fmt.Errorf("writing client certificates: %w", err)
		}
	}
	return files, nil
}

// RemoveClientFiles deletes what WriteClientFiles wrote, and dir if it is then empty. Files that
// are already gone are not an error, so cleanup can run twice.
func RemoveClientFiles(files ClientFiles) error {
	var errs []error
	for _, path := range []string{files.CA, files.Cert, files.Key} {
		if path == "" {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if files.Dir != "" {
		// Remove fails on a directory that holds other files; those are not ours to delete.
		if err := os.Remove(files.Dir); err != nil && !errors.Is(err, os.ErrNotExist) && !isNotEmpty(files.Dir) {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("removing client certificates: %w", err)
	}
	return nil
}

func isNotEmpty(dir string) bool {
	entries, err := os.ReadDir(dir)
	return err == nil && len(entries) > 0
}

// writePrivateFile writes data to path with mode 0600 through a temporary file and a rename, so a
// reader never sees half a key and a file left with wider permissions is replaced, not reused.
func writePrivateFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
