// Command vote is the voting app's front end: a page with two options; each browser gets a voter
// id in a cookie, and its vote goes to the worker, which keeps one vote per voter.
package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"log"
	"net/http"
	"os"
	"time"
)

var page = template.Must(template.New("vote").Parse(`<!doctype html>
<title>{{.A}} vs {{.B}}</title>
<h1>{{.A}} vs {{.B}}</h1>
<form method="post">
  <button name="vote" value="a">{{.A}}</button>
  <button name="vote" value="b">{{.B}}</button>
</form>
{{if .Voted}}<p>Your vote for {{.Voted}} was counted; vote again to change it.</p>{{end}}
<p><small>served by {{.Host}}</small></p>
`))

type view struct{ A, B, Voted, Host string }

func main() {
	worker := envOr("WORKER_URL", "http://worker:8081")
	a, b := envOr("OPTION_A", "Cats"), envOr("OPTION_B", "Dogs")
	host, _ := os.Hostname()
	client := &http.Client{Timeout: 5 * time.Second}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		v := view{A: a, B: b, Host: host}
		if r.Method == http.MethodPost {
			choice := r.FormValue("vote")
			body, _ := json.Marshal(map[string]string{"voter": voterID(w, r), "choice": choice})
			resp, err := client.Post(worker+"/votes", "application/json", bytes.NewReader(body))
			if err != nil {
				http.Error(w, "the worker is not answering: "+err.Error(), http.StatusBadGateway)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				http.Error(w, "the worker refused the vote: "+resp.Status, http.StatusBadRequest)
				return
			}
			v.Voted = map[string]string{"a": a, "b": b}[choice]
		}
		page.Execute(w, v)
	})
	addr := envOr("LISTEN", ":8080")
	log.Printf("vote: listening on %s, sending votes to %s", addr, worker)
	log.Fatal(http.ListenAndServe(addr, nil))
}

// voterID returns the browser's voter id, giving it one on its first visit.
func voterID(w http.ResponseWriter, r *http.Request) string {
	if c, err := r.Cookie("voter_id"); err == nil && c.Value != "" {
		return c.Value
	}
	id := make([]byte, 8)
	rand.Read(id)
	v := hex.EncodeToString(id)
	http.SetCookie(w, &http.Cookie{Name: "voter_id", Value: v, Path: "/", HttpOnly: true})
	return v
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
