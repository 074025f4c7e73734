package gitlabexec

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"

	"github.com/org/setup-ephemeral-buildkit/internal/ci"
	"github.com/org/setup-ephemeral-buildkit/internal/cijob"
)

// JobEnvDir is the variable config puts into job_env: the job's directory, which the runner
// then hands to the prepare, run and cleanup stages (never to the job's scripts). Later stages
// use it, so that all stages of one job agree on the directory.
const JobEnvDir = "EPHEMERAL_BUILDKIT_JOB_DIR"

// envFileName is the job's env file in its directory: `export NAME='value'` lines that the
// prepare stage's Up writes and every run sub-stage loads into its script's environment.
const envFileName = "env"

// jobResponse is the part of the runner's job response (JOB_RESPONSE_FILE) the hook reads.
type jobResponse struct {
	ID      int64 `json:"id"`
	JobInfo struct {
		Name      string `json:"name"`
		ProjectID int64  `json:"project_id"`
	} `json:"job_info"`
	GitInfo struct {
		Sha string `json:"sha"`
	} `json:"git_info"`
}

// Job is the GitLab job a stage works for, and where its files are.
type Job struct {
	// Identity is the job as the CI adapter reports it.
	Identity cijob.Identity
	// Dir is the job's own directory: state, env file, certificates, buildx configuration.
	Dir string
	// EnvFile is the env file in Dir.
	EnvFile string
	// BuildsDir is the builds_dir config reports for the job.
	BuildsDir string
	// Trusted is true when the job id came from JOB_RESPONSE_FILE, which the job's variables
	// cannot change, rather than from CUSTOM_ENV_CI_JOB_ID.
	Trusted bool
}

var digits = regexp.MustCompile(`^[0-9]{1,19}$`)

// job finds the job of this stage. Its id comes from the runner's job response when there is
// one: a job's CI/CD variables may override CI_JOB_ID, and the id names the directory with the
// job's client key. Name, commit and project id come from there too; the rest from CUSTOM_ENV_ variables.
func (e *Executor) job(s Settings) (Job, error) {
	id := ci.GitLabJob(e.getenv, ci.GitLabCustomExecutorPrefix)
	var job Job
	if path := e.getenv(EnvJobResponseFile); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return job, fmt.Errorf("reading the runner's job response: %w", err)
		}
		var resp jobResponse
		if err := json.Unmarshal(data, &resp); err != nil {
			return job, fmt.Errorf("reading the runner's job response %s: %w", path, err)
		}
		if resp.ID > 0 {
			id.JobID = strconv.FormatInt(resp.ID, 10)
			job.Trusted = true
		}
		if resp.JobInfo.ProjectID > 0 {
			id.RepositoryID = strconv.FormatInt(resp.JobInfo.ProjectID, 10)
		}
		if resp.JobInfo.Name != "" {
			id.JobName = resp.JobInfo.Name
		}
		if resp.GitInfo.Sha != "" {
			id.Commit = resp.GitInfo.Sha
		}
	}
	if !digits.MatchString(id.JobID) {
		return job, fmt.Errorf("no usable job id (%s is %q, and no %s): not a GitLab Runner custom-executor stage?",
			ci.GitLabCustomExecutorPrefix+"CI_JOB_ID", id.JobID, EnvJobResponseFile)
	}
	job.Identity = id
	job.Dir = filepath.Join(s.StateDir, "job-"+id.JobID)
	if dir := e.getenv(JobEnvDir); dir != "" {
		if !filepath.IsAbs(dir) || filepath.Base(dir) != "job-"+id.JobID {
			return job, fmt.Errorf("%s=%q is not this job's directory (job %s)", JobEnvDir, dir, id.JobID)
		}
		job.Dir = filepath.Clean(dir)
	}
	job.EnvFile = filepath.Join(job.Dir, envFileName)
	job.BuildsDir = s.BuildsDir
	if s.PerJobBuildsDir {
		job.BuildsDir = filepath.Join(s.BuildsDir, "job-"+id.JobID)
	}
	return job, nil
}

// ciSystem returns the CI adapter for the job: inputs from the administrator and, where
// allowed, the job's CUSTOM_ENV_BUILDKIT_* variables; state in the job's directory.
func (e *Executor) ciSystem(job Job, cfg ci.GitLabConfig) (*ci.GitLab, error) {
	s := e.settings()
	cfg.Getenv = e.getenv
	cfg.VarPrefix = ci.GitLabCustomExecutorPrefix
	cfg.InputPrefix = s.InputPrefix
	cfg.Inputs = s.Inputs
	cfg.JobInputs = s.JobInputs
	cfg.Job = job.Identity
	cfg.StateDir = job.Dir
	cfg.TempDir = job.Dir
	cfg.Now = e.now
	return ci.NewGitLab(cfg)
}
