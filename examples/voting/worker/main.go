// Command worker is the voting app's back end: it takes votes from the vote service, keeps one
// vote per voter (a voter who votes again changes their vote), and serves the tally to the result
// service. The tally is saved to a file after every change, so a restarted worker keeps it.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"sync"
)

// Ballots holds each voter's current choice.
type Ballots struct {
	mu     sync.Mutex
	byUser map[string]string
	file   string
}

// Vote is what the vote service sends.
type Vote struct {
	Voter  string `json:"voter"`
	Choice string `json:"choice"`
}

// Load reads the ballots saved in file; a missing file is an empty ballot box.
func Load(file string) (*Ballots, error) {
	b := &Ballots{byUser: map[string]string{}, file: file}
	data, err := os.ReadFile(file)
	if errors.Is(err, os.ErrNotExist) {
		return b, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(data, &b.byUser); err != nil {
		return nil, fmt.Errorf("reading ballots from %s: %w", file, err)
	}
	return b, nil
}

// Cast records v, replacing the voter's earlier vote, and saves the ballots.
func (b *Ballots) Cast(v Vote) error {
	if v.Voter == "" || (v.Choice != "a" && v.Choice != "b") {
		return fmt.Errorf("vote %+v: want a voter and choice a or b", v)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.byUser[v.Voter] = v.Choice
	data, err := json.Marshal(b.byUser)
	if err != nil {
		return err
	}
	tmp := b.file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, b.file)
}

// Tally counts the current votes per choice.
func (b *Ballots) Tally() map[string]int {
	b.mu.Lock()
	defer b.mu.Unlock()
	t := map[string]int{"a": 0, "b": 0}
	for _, c := range b.byUser {
		t[c]++
	}
	return t
}

func main() {
	dir := envOr("DATA_DIR", "/var/lib/worker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		log.Fatal(err)
	}
	ballots, err := Load(filepath.Join(dir, "ballots.json"))
	if err != nil {
		log.Fatal(err)
	}
	http.HandleFunc("POST /votes", func(w http.ResponseWriter, r *http.Request) {
		var v Vote
		if err := json.NewDecoder(r.Body).Decode(&v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := ballots.Cast(v); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	http.HandleFunc("GET /tally", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(ballots.Tally())
	})
	addr := envOr("LISTEN", ":8081")
	log.Printf("worker: listening on %s, ballots in %s", addr, dir)
	log.Fatal(http.ListenAndServe(addr, nil))
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
