// Command result shows the voting app's current result: the worker's tally as percentages, on a
// page that refreshes itself, and as JSON under /api/tally.
package main

import (
	"encoding/json"
	"fmt"
	"html/template"
	"log"
	"net/http"
	"os"
	"time"
)

var page = template.Must(template.New("result").Parse(`<!doctype html>
<meta http-equiv="refresh" content="2">
<title>Result</title>
<h1>{{.A}}: {{printf "%.1f" .PctA}}% &middot; {{.B}}: {{printf "%.1f" .PctB}}%</h1>
<p>{{.Total}} votes</p>
`))

type view struct {
	A, B       string
	PctA, PctB float64
	Total      int
}

func main() {
	worker := envOr("WORKER_URL", "http://worker:8081")
	a, b := envOr("OPTION_A", "Cats"), envOr("OPTION_B", "Dogs")
	client := &http.Client{Timeout: 5 * time.Second}
	tally := func() (map[string]int, error) {
		resp, err := client.Get(worker + "/tally")
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("worker answered %s", resp.Status)
		}
		t := map[string]int{}
		return t, json.NewDecoder(resp.Body).Decode(&t)
	}
	http.HandleFunc("GET /api/tally", func(w http.ResponseWriter, r *http.Request) {
		t, err := tally()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(t)
	})
	http.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		t, err := tally()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		v := view{A: a, B: b, Total: t["a"] + t["b"]}
		if v.Total > 0 {
			v.PctA = 100 * float64(t["a"]) / float64(v.Total)
			v.PctB = 100 - v.PctA
		}
		page.Execute(w, v)
	})
	addr := envOr("LISTEN", ":8082")
	log.Printf("result: listening on %s, reading the tally from %s", addr, worker)
	log.Fatal(http.ListenAndServe(addr, nil))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
