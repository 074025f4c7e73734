// Package regcache names the registry cache of a job's builders: one cache reference per
// platform in a repository the user gives (cache-ref), and whether this job writes it
// (cache-write). Pure: it reads no environment and talks to no registry; the app exports what it
// returns for docker buildx's --cache-from and --cache-to.
//
// One reference per platform because a multi-platform cache written to one tag makes the
// platforms overwrite each other in turn; and writing only from trusted default-branch jobs,
// because a cache is code the next build runs: a fork's pull request must never write one.
package regcache

import (
	"errors"
	"regexp"
	"strings"

	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Input names, as action.yml declares them and the CLI's flags spell them.
const (
	InputCacheRef   = "cache-ref"
	InputCacheWrite = "cache-write"
)

// Write is the cache-write input: whether this job exports the cache.
type Write string

// Values of cache-write.
const (
	// WriteAuto writes from jobs on the repository's default branch started by a trusted event
	// (a push, a schedule, a manual run), never from pull or merge requests.
	WriteAuto  Write = "auto"
	WriteTrue  Write = "true"
	WriteFalse Write = "false"
)

// AcceptedWrite describes what ParseWrite reads.
const AcceptedWrite = `auto (write from default-branch jobs only), or a boolean: ` + k8sprov.AcceptedBool

// AcceptedRef describes what ParseRef reads.
const AcceptedRef = `a registry repository without tag or digest, e.g. registry.example.com/org/app/cache ` +
	`(lower-case path components; host with optional port)`

// ParseWrite reads cache-write: "auto" (or empty), or a boolean as every boolean input reads it
// (k8sprov.ParseBool).
func ParseWrite(s string) (Write, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == string(WriteAuto) {
		return WriteAuto, nil
	}
	v, err := k8sprov.ParseBool(s, false)
	if err != nil {
		return "", &k8sprov.InputError{Input: InputCacheWrite, Value: s, Err: errors.New("not auto or a boolean"), Accepted: AcceptedWrite}
	}
	if v {
		return WriteTrue, nil
	}
	return WriteFalse, nil
}

// The distribution reference grammar, for a repository without tag or digest: a domain (with
// an optional port) and lower-case path components separated by '/', '.', '_', '__' or '-'.
var (
	domainComponent = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
	domain          = domainComponent + `(?:\.` + domainComponent + `)*(?::[0-9]+)?`
	pathComponent   = `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
	repositoryRE    = regexp.MustCompile(`^` + domain + `/` + pathComponent + `(?:/` + pathComponent + `)*$`)
)

// ParseRef checks cache-ref: a repository with its registry's host, since builders have no
// default registry of a user's choosing. It is lower-cased first, as `${{ github.repository }}`
// may not be and references must be. Empty means no registry cache.
func ParseRef(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	if s == "" {
		return "", nil
	}
	refuse := func(why string) (string, error) {
		return "", &k8sprov.InputError{Input: InputCacheRef, Value: s, Err: errors.New(why), Accepted: AcceptedRef}
	}
	switch {
	case strings.Contains(s, "://"):
		return refuse("a repository, not a URL")
	case strings.Contains(s, "@"):
		return refuse("has a digest; the tags are chosen per platform")
	case len(s) > 255:
		return refuse("longer than 255 characters")
	}
	if i := strings.LastIndex(s, ":"); i > strings.LastIndex(s, "/") {
		return refuse("has a tag; the tags are chosen per platform (cache-<platform>)")
	}
	host, _, _ := strings.Cut(s, "/")
	if !strings.ContainsAny(host, ".:") && host != "localhost" {
		return refuse("its first component is not a registry host (no '.' or port): name the registry")
	}
	if !repositoryRE.MatchString(s) {
		return refuse("not a repository name")
	}
	return s, nil
}

// Platform is one platform's cache: the reference, and the values of docker buildx's
// --cache-from and --cache-to (CacheTo empty when this job does not write).
type Platform struct {
	Platform  platform.Platform `json:"-"`
	Ref       string            `json:"ref"`
	CacheFrom string            `json:"cache-from"`
	CacheTo   string            `json:"cache-to"`
}

// Tag is the tag of platform p's cache in the repository: "cache-amd64", "cache-arm-v7".
func Tag(p platform.Platform) string { return "cache-" + p.Slug() }

// Plan returns the cache of each platform in repo, writing when write is set. The export is
// mode=max (every stage's layers, so a change in a late stage still reuses the early ones) with
// the OCI media types and image manifest that registries without the BuildKit cache manifest
// list accept; a failing export fails the build only where the user asked for it
// (ignore-error=false is BuildKit's default, kept, so a write that is expected is visible).
func Plan(repo string, platforms []platform.Platform, write bool) []Platform {
	if repo == "" {
		return nil
	}
	out := make([]Platform, 0, len(platforms))
	for _, p := range platforms {
		ref := repo + ":" + Tag(p)
		c := Platform{Platform: p, Ref: ref, CacheFrom: "type=registry,ref=" + ref}
		if write {
			c.CacheTo = "type=registry,ref=" + ref + ",mode=max,oci-mediatypes=true,image-manifest=true"
		}
		out = append(out, c)
	}
	return out
}

// Decide resolves cache-write for a job: true and false are the user's; auto writes only when
// the CI adapter says the job is a trusted default-branch job (trusted, for the reason why).
// The returned reason is for the log.
func Decide(w Write, trusted bool, why string) (bool, string) {
	switch w {
	case WriteTrue:
		return true, "cache-write is true"
	case WriteFalse:
		return false, "cache-write is false"
	}
	return trusted, "cache-write is auto: " + why
}
