package ociregistry

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestTokenAuth: a registry that wants a Bearer token gets one per repository from its token
// service, asked with the credentials; wrong credentials are the token service's refusal.
func TestTokenAuth(t *testing.T) {
	var tokenRequests []string
	var srv *httptest.Server
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/token":
			user, pass, _ := r.BasicAuth()
			tokenRequests = append(tokenRequests, r.URL.Query().Get("scope")+" "+r.URL.Query().Get("service"))
			if user != "bot" || pass != "s3cret" {
				http.Error(w, `{"errors":[{"code":"DENIED"}]}`, http.StatusForbidden)
				return
			}
			scope := r.URL.Query().Get("scope")
			_, _ = w.Write([]byte(`{"token":"tok-` + strings.Split(scope, ":")[1] + `"}`))
		case r.Header.Get("Authorization") == "":
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+srv.URL+`/token",service="reg.test"`)
			w.WriteHeader(http.StatusUnauthorized)
		default:
			repo := repoInPath.FindStringSubmatch(r.URL.Path)[1]
			if r.Header.Get("Authorization") != "Bearer tok-"+repo {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			_, _ = w.Write([]byte("ok " + repo))
		}
	}))
	defer srv.Close()

	client := &http.Client{Transport: &TokenAuth{Base: srv.URL, Username: "bot", Password: "s3cret"}}
	for _, repo := range []string{"org/setup-ephemeral-buildkit", "org/setup-ephemeral-buildkit-job", "org/setup-ephemeral-buildkit"} {
		resp, err := client.Get(srv.URL + "/v2/" + repo + "/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: status %d, want 200 with the token", repo, resp.StatusCode)
		}
	}
	want := []string{"repository:org/setup-ephemeral-buildkit:pull,push reg.test", "repository:org/setup-ephemeral-buildkit-job:pull,push reg.test"}
	if strings.Join(tokenRequests, "|") != strings.Join(want, "|") {
		t.Errorf("token requests %q, want one per repository %q", tokenRequests, want)
	}

	wrong := &http.Client{Transport: &TokenAuth{Base: srv.URL, Username: "bot", Password: "wrong"}}
	_, err := wrong.Get(srv.URL + "/v2/org/x/manifests/v1")
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Errorf("wrong password: %v, want the token service's 403", err)
	}
}

func TestParseChallenge(t *testing.T) {
	c, err := parseChallenge(`Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:user/image:pull"`)
	if err != nil || c != (challenge{"bearer", "https://ghcr.io/token", "ghcr.io"}) {
		t.Errorf("ghcr.io's challenge: %+v, %v", c, err)
	}
	if c, err := parseChallenge(`Basic realm="Registry Realm"`); err != nil || c.scheme != "basic" {
		t.Errorf("Basic: %+v, %v", c, err)
	}
	if _, err := parseChallenge(`Negotiate`); err == nil || !strings.Contains(err.Error(), `"Negotiate"`) {
		t.Errorf("Negotiate: %v, want a refusal naming it", err)
	}
}
