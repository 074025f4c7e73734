package ociregistry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
)

// TokenAuth is an http.RoundTripper that signs in to a registry the way docker does (the
// distribution token protocol): it asks the registry's token service, named by /v2/'s
// `WWW-Authenticate: Bearer realm=...,service=...`, for a token per repository (scope
// repository:NAME:pull,push) with Username and Password, and sends it with every request for
// that repository. A registry that asks for no token (no 401 on /v2/) gets plain requests; one
// that wants Basic gets Username and Password as such.
type TokenAuth struct {
	// Base is the registry's base URL, as Client.Base.
	Base               string
	Username, Password string
	// Next sends the requests; nil means http.DefaultTransport.
	Next http.RoundTripper

	once      sync.Once
	challenge challenge
	probeErr  error
	mu        sync.Mutex
	tokens    map[string]string // repository -> token
}

type challenge struct {
	scheme, realm, service string
}

// repoInPath is the repository of a /v2/<name>/(blobs|manifests|tags)/... request.
var repoInPath = regexp.MustCompile(`^/v2/(.+?)/(blobs|manifests|tags)/`)

func (a *TokenAuth) next() http.RoundTripper {
	if a.Next == nil {
		return http.DefaultTransport
	}
	return a.Next
}

// RoundTrip adds the credentials the registry asked for.
func (a *TokenAuth) RoundTrip(req *http.Request) (*http.Response, error) {
	a.once.Do(func() { a.challenge, a.probeErr = a.probe(req.Context()) })
	if a.probeErr != nil {
		return nil, a.probeErr
	}
	switch a.challenge.scheme {
	case "":
		return a.next().RoundTrip(req)
	case "basic":
		req = req.Clone(req.Context())
		req.SetBasicAuth(a.Username, a.Password)
		return a.next().RoundTrip(req)
	}
	m := repoInPath.FindStringSubmatch(req.URL.Path)
	if m == nil {
		return a.next().RoundTrip(req)
	}
	token, err := a.token(req.Context(), m[1])
	if err != nil {
		return nil, err
	}
	req = req.Clone(req.Context())
	req.Header.Set("Authorization", "Bearer "+token)
	return a.next().RoundTrip(req)
}

// probe asks /v2/ how to sign in.
func (a *TokenAuth) probe(ctx context.Context) (challenge, error) {
	u := strings.TrimSuffix(a.Base, "/") + "/v2/"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return challenge{}, err
	}
	resp, err := a.next().RoundTrip(req)
	if err != nil {
		return challenge{}, fmt.Errorf("GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusUnauthorized {
		return challenge{}, nil
	}
	return parseChallenge(resp.Header.Get("WWW-Authenticate"))
}

// parseChallenge reads `Bearer realm="...",service="..."` or `Basic realm="..."`.
func parseChallenge(h string) (challenge, error) {
	scheme, params, _ := strings.Cut(strings.TrimSpace(h), " ")
	c := challenge{scheme: strings.ToLower(scheme)}
	for _, m := range regexp.MustCompile(`(\w+)="([^"]*)"`).FindAllStringSubmatch(params, -1) {
		switch strings.ToLower(m[1]) {
		case "realm":
			c.realm = m[2]
		case "service":
			c.service = m[2]
		}
	}
	switch {
	case c.scheme == "basic":
		return c, nil
	case c.scheme == "bearer" && c.realm != "":
		return c, nil
	}
	return challenge{}, fmt.Errorf("the registry asks for credentials with %q: want Bearer with a realm, or Basic", h)
}

// token returns a token for pulling and pushing repo, from the token service.
func (a *TokenAuth) token(ctx context.Context, repo string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t, ok := a.tokens[repo]; ok {
		return t, nil
	}
	q := url.Values{"scope": {"repository:" + repo + ":pull,push"}}
	if a.challenge.service != "" {
		q.Set("service", a.challenge.service)
	}
	u := a.challenge.realm + "?" + q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", err
	}
	if a.Username != "" || a.Password != "" {
		req.SetBasicAuth(a.Username, a.Password)
	}
	resp, err := a.next().RoundTrip(req)
	if err != nil {
		return "", fmt.Errorf("asking %s for a token: %w", a.challenge.realm, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return "", &Error{Method: http.MethodGet, URL: a.challenge.realm, Status: resp.StatusCode, Body: string(body[:min(len(body), 4096)])}
	}
	var answer struct {
		Token       string `json:"token"`
		AccessToken string `json:"access_token"`
	}
	if err := json.Unmarshal(body, &answer); err != nil {
		return "", fmt.Errorf("the token service %s answered: %w", a.challenge.realm, err)
	}
	t := answer.Token
	if t == "" {
		t = answer.AccessToken
	}
	if t == "" {
		return "", errors.New("the token service " + a.challenge.realm + " answered without a token")
	}
	if a.tokens == nil {
		a.tokens = map[string]string{}
	}
	a.tokens[repo] = t
	return t, nil
}
