package ociimage

import (
	"archive/tar"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	digest "github.com/opencontainers/go-digest"
)

// Tree describes a layer made from a directory on the host: a root file system that a tool such
// as debootstrap made, or a toolchain unpacked from a module zip.
type Tree struct {
	// Root is the host directory.
	Root string
	// Prefix is where Root goes in the image, such as /usr/local/go; empty means /.
	Prefix string
	// KeepOwners keeps each entry's numeric owner and group (a root file system has files of
	// other users and groups, such as /etc/shadow's group); otherwise everything is root's.
	KeepOwners bool
	// Mode, if set, gives an entry's permission bits (plus setuid, setgid, sticky) from its path
	// relative to Root (slash-separated) and its mode on the host; otherwise the host's are kept.
	Mode func(rel string, host fs.FileMode) fs.FileMode
	// Skip, if set, leaves out entries by relative path (a directory with everything below it).
	Skip func(rel string) bool
}

// AddTreeLayer stores the layer of t and returns it. Timestamps are the epoch, owner names are
// not recorded, hard links inside Root stay hard links, and the walk is in lexical order, so the
// same tree always gives the same bytes. Device nodes, sockets and FIFOs are refused: a
// container gets those from its runtime, not from its image.
func (l *Layout) AddTreeLayer(t Tree, createdBy string) (Layer, error) {
	return l.addLayer(createdBy, func(w io.Writer) (digest.Digest, error) { return writeTree(w, t) })
}

func writeTree(w io.Writer, t Tree) (digest.Digest, error) {
	prefix := strings.Trim(path.Clean("/"+t.Prefix), "/")
	return writeGzipTar(w, func(tw *tar.Writer) error {
		// The parents of the prefix, as a plain image would have them.
		parts := strings.Split(prefix, "/")
		for i := 1; prefix != "" && i < len(parts); i++ {
			dir := strings.Join(parts[:i], "/")
			if err := tw.WriteHeader(dirHeader(dir+"/", 0o755)); err != nil {
				return fmt.Errorf("writing directory /%s: %w", dir, err)
			}
		}
		walker := treeWriter{tw: tw, tree: t, prefix: prefix, links: map[[2]uint64]string{}}
		if err := filepath.WalkDir(t.Root, walker.visit); err != nil {
			return fmt.Errorf("packing %s: %w", t.Root, err)
		}
		return nil
	})
}

type treeWriter struct {
	tw     *tar.Writer
	tree   Tree
	prefix string
	// links maps a (device, inode) of a file with several names to the first name written.
	links map[[2]uint64]string
}

func (t *treeWriter) visit(hostPath string, d fs.DirEntry, err error) error {
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(t.tree.Root, hostPath)
	if err != nil {
		return err
	}
	rel = filepath.ToSlash(rel)
	if rel != "." && t.tree.Skip != nil && t.tree.Skip(rel) {
		if d.IsDir() {
			return filepath.SkipDir
		}
		return nil
	}
	name := path.Join(t.prefix, rel)
	if rel == "." {
		if t.prefix == "" {
			return nil // the image's / is not an entry
		}
		name = t.prefix
	}
	fi, err := d.Info()
	if err != nil {
		return err
	}
	mode := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if t.tree.Mode != nil {
		mode = t.tree.Mode(rel, fi.Mode())
	}
	hdr := baseHeader(name, tarMode(mode))
	st, _ := fi.Sys().(*syscall.Stat_t)
	if t.tree.KeepOwners && st != nil && (st.Uid != 0 || st.Gid != 0) {
		hdr.Uid, hdr.Gid = int(st.Uid), int(st.Gid)
		// Names would come from the host's user database, not the image's: numbers only.
		hdr.Uname, hdr.Gname = "", ""
	}
	switch typ := fi.Mode().Type(); {
	case typ == fs.ModeDir:
		hdr.Typeflag = tar.TypeDir
		hdr.Name += "/"
		return t.tw.WriteHeader(hdr)
	case typ == fs.ModeSymlink:
		target, err := os.Readlink(hostPath)
		if err != nil {
			return err
		}
		hdr.Typeflag = tar.TypeSymlink
		hdr.Linkname = target
		hdr.Mode = 0o777
		return t.tw.WriteHeader(hdr)
	case typ.IsRegular():
		if st != nil && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := t.links[key]; ok {
				hdr.Typeflag = tar.TypeLink
				hdr.Linkname = first
				return t.tw.WriteHeader(hdr)
			}
			t.links[key] = name
		}
		return t.writeFile(hostPath, hdr, fi.Size())
	default:
		return fmt.Errorf("%s is a %v: only directories, regular files, symlinks and hard links go into a layer", hostPath, typ)
	}
}

func (t *treeWriter) writeFile(hostPath string, hdr *tar.Header, size int64) error {
	f, err := os.Open(hostPath)
	if err != nil {
		return err
	}
	defer f.Close()
	hdr.Typeflag = tar.TypeReg
	hdr.Size = size
	if err := t.tw.WriteHeader(hdr); err != nil {
		return fmt.Errorf("writing header of %s: %w", hostPath, err)
	}
	// CopyN fails on a file that shrank while being read; tar.Writer on one that grew.
	if _, err := io.CopyN(t.tw, f, size); err != nil {
		return fmt.Errorf("copying %s: %w", hostPath, err)
	}
	return nil
}
