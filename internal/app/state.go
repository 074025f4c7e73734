package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"

	"k8s.io/apimachinery/pkg/types"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/k8sprov"
	"github.com/org/setup-ephemeral-buildkit/internal/pki"
	"github.com/org/setup-ephemeral-buildkit/internal/platform"
)

// Names of the state Main saves for Post. Main saves everything Post needs before it creates
// anything, so a main phase killed at any point leaves Post enough to remove what it created.
const (
	stateNamespace   = "namespace"
	stateJobKey      = "job-key"
	stateOwnerName   = "owner-name"
	stateOwnerUID    = "owner-uid"
	stateBuilder     = "builder"
	statePlatforms   = "platforms"
	stateJobDir      = "job-dir"
	stateTLSDir      = "tls-dir"
	stateBuildxDir   = "buildx-config"
	stateKubeconfig  = "kubeconfig"
	stateCleanup     = "cleanup"
	stateMainOutcome = "main-outcome"
	// stateSecretName and stateSecretUID name the job's TLS Secret once it exists: the
	// runners' Role cannot read Secrets, so cleanup deletes it by name and UID.
	stateSecretName = "secret-name"
	stateSecretUID  = "secret-uid"
	// stateExports holds the environment exported to later steps as a JSON object, for the
	// CLI's env verb.
	stateExports = "exports"
)

// Values of stateMainOutcome: the builders are ready and exported, or the main step failed and
// removed everything it had created. Without either, the main step did not finish.
const (
	outcomeReady   = "ready"
	outcomeRemoved = "removed"
)

// jobState is what Main leaves for Post.
type jobState struct {
	Namespace  string
	Key        k8sprov.JobKey
	Owner      *k8sprov.RunnerPod
	Builder    string
	Platforms  []platform.Platform
	JobDir     string
	TLSDir     string
	BuildxDir  string
	Kubeconfig string
	Cleanup    bool
	// Secret is the job's TLS Secret, known once the builders were created.
	Secret k8sprov.ObjectRef
	// Ready is true when Main finished successfully; Removed when it failed and removed
	// everything it had created.
	Ready   bool
	Removed bool
	Exports map[string]string
}

// jobDirs are the job's local directories, all under one directory of its own.
func jobDirs(tempDir string, key k8sprov.JobKey) (jobDir, tlsDir, buildxDir string) {
	jobDir = filepath.Join(tempDir, "setup-ephemeral-buildkit-"+string(key))
	return jobDir, filepath.Join(jobDir, "tls"), filepath.Join(jobDir, "buildx")
}

// clientFiles are the paths pki.WriteClientFiles uses in dir.
func clientFiles(dir string) pki.ClientFiles {
	return pki.ClientFiles{
		Dir:  dir,
		CA:   filepath.Join(dir, pki.CAFileName),
		Cert: filepath.Join(dir, pki.CertFileName),
		Key:  filepath.Join(dir, pki.KeyFileName),
	}
}

// save records s for Post. isPost goes first: on GitHub it is what makes the next run of the
// program the post step, and a post step with partial state still cleans up what it can.
func (s jobState) save(p ci.System) error {
	ownerName, ownerUID := "", ""
	if s.Owner != nil {
		ownerName, ownerUID = s.Owner.Name, string(s.Owner.UID)
	}
	cleanup := "true"
	if !s.Cleanup {
		cleanup = "false"
	}
	for _, kv := range [][2]string{
		{ci.StateIsPost, "true"},
		{stateNamespace, s.Namespace},
		{stateJobKey, string(s.Key)},
		{stateOwnerName, ownerName},
		{stateOwnerUID, ownerUID},
		{stateBuilder, s.Builder},
		{statePlatforms, platform.FormatList(s.Platforms)},
		{stateJobDir, s.JobDir},
		{stateTLSDir, s.TLSDir},
		{stateBuildxDir, s.BuildxDir},
		{stateKubeconfig, s.Kubeconfig},
		{stateCleanup, cleanup},
	} {
		if err := p.SaveState(kv[0], kv[1]); err != nil {
			return fmt.Errorf("saving state for the cleanup phase: %w", err)
		}
	}
	return nil
}

// markReady records that Main finished, with the environment it exported.
func markReady(p ci.System, exports map[string]string) error {
	data, err := json.Marshal(exports)
	if err != nil {
		return fmt.Errorf("encoding exports: %w", err)
	}
	if err := p.SaveState(stateExports, string(data)); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	if err := p.SaveState(stateMainOutcome, outcomeReady); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// saveSecret records the job's TLS Secret once Provision created it.
func (s *jobState) saveSecret(p ci.System, secret k8sprov.ObjectRef) error {
	s.Secret = secret
	for _, kv := range [][2]string{{stateSecretName, secret.Name}, {stateSecretUID, string(secret.UID)}} {
		if err := p.SaveState(kv[0], kv[1]); err != nil {
			return fmt.Errorf("saving state for the cleanup phase: %w", err)
		}
	}
	return nil
}

// loadState reads what Main saved. ok is false when Main saved nothing (it failed before
// creating anything). A malformed entry is an error, with what could be read.
func loadState(p ci.System) (s jobState, ok bool, err error) {
	s.Namespace = p.State(stateNamespace)
	s.Key = k8sprov.JobKey(p.State(stateJobKey))
	if s.Namespace == "" || s.Key == "" {
		return s, false, nil
	}
	if name := p.State(stateOwnerName); name != "" {
		s.Owner = &k8sprov.RunnerPod{Name: name, Namespace: s.Namespace, UID: types.UID(p.State(stateOwnerUID))}
	}
	s.Builder = p.State(stateBuilder)
	s.JobDir = p.State(stateJobDir)
	s.TLSDir = p.State(stateTLSDir)
	s.BuildxDir = p.State(stateBuildxDir)
	s.Kubeconfig = p.State(stateKubeconfig)
	s.Cleanup = p.State(stateCleanup) != "false"
	s.Secret = k8sprov.ObjectRef{Name: p.State(stateSecretName), UID: types.UID(p.State(stateSecretUID))}
	s.Ready = p.State(stateMainOutcome) == outcomeReady
	s.Removed = p.State(stateMainOutcome) == outcomeRemoved
	var errs []error
	if list := p.State(statePlatforms); list != "" {
		if s.Platforms, err = platform.ParseList(list); err != nil {
			errs = append(errs, fmt.Errorf("state %s: %w", statePlatforms, err))
		}
	}
	if data := p.State(stateExports); data != "" {
		if err := json.Unmarshal([]byte(data), &s.Exports); err != nil {
			errs = append(errs, fmt.Errorf("state %s: %w", stateExports, err))
		}
	}
	return s, true, errors.Join(errs...)
}
