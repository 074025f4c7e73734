// Package auditlog reads the local cluster's API-server audit log (JSON lines of audit.k8s.io/v1
// events) and counts requests by user, verb and resource, so a benchmark measures what a job
// costs the API server at the server, whatever client made the requests.
package auditlog

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Event is the part of an audit event the counts need.
type Event struct {
	Stage      string    `json:"stage"`
	Verb       string    `json:"verb"`
	RequestURI string    `json:"requestURI"`
	Received   time.Time `json:"requestReceivedTimestamp"`
	User       struct {
		Username string `json:"username"`
	} `json:"user"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		Namespace   string `json:"namespace"`
	} `json:"objectRef"`
}

// Resource is "pods", "pods/exec", or the request path for a non-resource request.
func (e Event) Resource() string {
	if e.ObjectRef == nil {
		path, _, _ := strings.Cut(e.RequestURI, "?")
		return path
	}
	if e.ObjectRef.Subresource != "" {
		return e.ObjectRef.Resource + "/" + e.ObjectRef.Subresource
	}
	return e.ObjectRef.Resource
}

// Read returns the completed requests in r (stage ResponseComplete or Panic): one event per
// request, whatever stages the policy records. Lines that are not events are an error.
func Read(r io.Reader) ([]Event, error) {
	var events []Event
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for n := 1; sc.Scan(); n++ {
		var e Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, fmt.Errorf("audit log line %d: %w", n, err)
		}
		if e.Stage == "ResponseComplete" || e.Stage == "Panic" {
			events = append(events, e)
		}
	}
	return events, sc.Err()
}

// ReadFile reads the log at path.
func ReadFile(path string) ([]Event, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Read(f)
}

// Counts are requests by "verb resource".
type Counts map[string]int

// Total is the number of requests.
func (c Counts) Total() int {
	n := 0
	for _, v := range c {
		n += v
	}
	return n
}

// String lists the counts, largest first: "12 get pods, 3 create pods".
func (c Counts) String() string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if c[keys[i]] != c[keys[j]] {
			return c[keys[i]] > c[keys[j]]
		}
		return keys[i] < keys[j]
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%d %s", c[k], k)
	}
	return strings.Join(parts, ", ")
}

// Count counts the events of user whose request was received in [from, to).
func Count(events []Event, user string, from, to time.Time) Counts {
	c := Counts{}
	for _, e := range events {
		if e.User.Username != user || e.Received.Before(from) || !e.Received.Before(to) {
			continue
		}
		c[e.Verb+" "+e.Resource()]++
	}
	return c
}

// ServiceAccount is the user name of ServiceAccount name in namespace.
func ServiceAccount(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}
