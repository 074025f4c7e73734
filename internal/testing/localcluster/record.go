package localcluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// hostRecord is everything Up changed on the host, written to <state>/host.json the moment each
// change is made. Down works from this file alone, so it can undo a run that crashed half-way or
// was killed before it could clean up.
type hostRecord struct {
	mu   sync.Mutex
	path string

	Processes []processRecord `json:"processes,omitempty"`
	// Bridge is the name of the bridge Up created; empty when none was created.
	Bridge string `json:"bridge,omitempty"`
	// FirewallRules are the exact rule specs Up inserted, per command (iptables, ip6tables).
	FirewallRules []firewallRule `json:"firewallRules,omitempty"`
	// Sysctls holds the values the kernel had before Up (ip_forward, the kubelet's sysctls).
	Sysctls map[string]string `json:"sysctls,omitempty"`
	// BinfmtMounted is set when Up mounted binfmt_misc itself.
	BinfmtMounted bool `json:"binfmtMounted,omitempty"`
	// BinfmtRegistered lists binfmt_misc entries Up registered.
	BinfmtRegistered []string `json:"binfmtRegistered,omitempty"`
	// CreatedPaths are paths outside the state directory, hard-coded by kubelet, containerd or
	// libcni, that did not exist before Up.
	CreatedPaths []string `json:"createdPaths,omitempty"`
	// NetnsBefore lists /run/netns entries that existed before Up; any others matching the
	// CNI naming are the cluster's.
	NetnsBefore []string `json:"netnsBefore,omitempty"`
	// RecordedNetns is set once NetnsBefore has been taken (an empty list is meaningful).
	RecordedNetns bool `json:"recordedNetns,omitempty"`
	// ContainerdAddress is the socket of the cluster's containerd, used to find its shims.
	ContainerdAddress string `json:"containerdAddress,omitempty"`
}

type processRecord struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// Binary is checked against /proc/<pid>/exe before signalling, so a reused PID is never hit.
	Binary string `json:"binary"`
	// Args and Env (beyond the inherited environment) let Cluster.restart start the process
	// again exactly as it was.
	Args []string `json:"args,omitempty"`
	Env  []string `json:"env,omitempty"`
}

type firewallRule struct {
	Command string   `json:"command"`
	Table   string   `json:"table"`
	Chain   string   `json:"chain"`
	Spec    []string `json:"spec"`
}

func hostRecordPath(stateDir string) string { return filepath.Join(stateDir, "host.json") }

// loadHostRecord reads the record of a previous run; a missing file yields an empty record.
func loadHostRecord(stateDir string) (*hostRecord, error) {
	rec := &hostRecord{path: hostRecordPath(stateDir)}
	data, err := os.ReadFile(rec.path)
	if errors.Is(err, os.ErrNotExist) {
		return rec, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading host record: %w", err)
	}
	if err := json.Unmarshal(data, rec); err != nil {
		return nil, fmt.Errorf("parsing host record %s: %w", rec.path, err)
	}
	return rec, nil
}

// update applies change and persists the record before returning, so a crash right after a
// host change still leaves the change on record.
func (r *hostRecord) update(change func(*hostRecord)) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	change(r)
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding host record: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(r.path), 0o700); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing host record: %w", err)
	}
	if err := os.Rename(tmp, r.path); err != nil {
		return fmt.Errorf("replacing host record: %w", err)
	}
	return nil
}

func (r *hostRecord) empty() bool {
	return len(r.Processes) == 0 && r.Bridge == "" && len(r.FirewallRules) == 0 && len(r.Sysctls) == 0 &&
		!r.BinfmtMounted && len(r.BinfmtRegistered) == 0 && len(r.CreatedPaths) == 0 && !r.RecordedNetns
}

// setProcess records p, replacing the entry of the same name if there is one.
func (r *hostRecord) setProcess(p processRecord) {
	for i := range r.Processes {
		if r.Processes[i].Name == p.Name {
			r.Processes[i] = p
			return
		}
	}
	r.Processes = append(r.Processes, p)
}

// process returns the record of the process called name.
func (r *hostRecord) process(name string) (processRecord, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.Processes {
		if p.Name == name {
			return p, true
		}
	}
	return processRecord{}, false
}
