package k8sprov

import (
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// resetProxy is a loopback TCP proxy in front of the API server that can reset every connection
// through it, as a restarted API server, a load balancer or a network blip does, and refuse
// new ones for a while (its port closed, as while kube-apiserver restarts).
type resetProxy struct {
	t       *testing.T
	addr    string
	target  string
	mu      sync.Mutex
	ln      net.Listener
	conns   map[net.Conn]bool
	refuse  bool
	resets  int
	started int
}

func startResetProxy(t *testing.T, target string) *resetProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &resetProxy{t: t, ln: ln, addr: ln.Addr().String(), target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { p.setRefuse(true); p.resetAll() })
	go p.serve(ln)
	return p
}

func (p *resetProxy) serve(ln net.Listener) {
	for {
		client, err := ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			reset(client)
			continue
		}
		p.mu.Lock()
		if p.refuse {
			// The port closed while this connection was being set up.
			p.mu.Unlock()
			reset(client)
			reset(server)
			continue
		}
		p.conns[client], p.conns[server] = true, true
		p.started++
		p.mu.Unlock()
		go p.pipe(client, server)
		go p.pipe(server, client)
	}
}

func (p *resetProxy) pipe(dst, src net.Conn) {
	_, _ = io.Copy(dst, src)
	reset(dst)
	reset(src)
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

// reset closes c with a TCP RST rather than a FIN, as a crashed peer or a middlebox does.
func reset(c net.Conn) {
	if tcp, ok := c.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = c.Close()
}

// resetAll resets every open connection and returns how many there were.
func (p *resetProxy) resetAll() int {
	p.mu.Lock()
	conns := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		conns = append(conns, c)
	}
	p.resets++
	p.mu.Unlock()
	for _, c := range conns {
		reset(c)
	}
	return len(conns)
}

// setRefuse closes the proxy's port (connections are refused) or opens it again.
func (p *resetProxy) setRefuse(refuse bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if refuse == p.refuse {
		return
	}
	p.refuse = refuse
	if refuse {
		_ = p.ln.Close()
		return
	}
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		p.t.Errorf("opening the proxy's port again: %v", err)
		return
	}
	p.ln = ln
	go p.serve(ln)
}

// through returns cfg with its connections going through the proxy; the API server's
// certificate is still verified for its own host name.
func (p *resetProxy) through(t *testing.T, cfg *rest.Config) *rest.Config {
	t.Helper()
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	out := rest.CopyConfig(cfg)
	if out.TLSClientConfig.ServerName == "" {
		out.TLSClientConfig.ServerName = u.Hostname()
	}
	u.Host = p.addr
	out.Host = u.String()
	return out
}

func apiServerAddress(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	u, err := url.Parse(cfg.Host)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// progressLog collects progress lines and signals the first one matching a prefix.
type progressLog struct {
	mu    sync.Mutex
	start time.Time
	lines []string
}

func (l *progressLog) add(t *testing.T, p Progress) {
	l.mu.Lock()
	defer l.mu.Unlock()
	line := p.At.Sub(l.start).Round(10*time.Millisecond).String() + " " + p.Platform.String() + " " + p.Message
	l.lines = append(l.lines, line)
	t.Log(line)
}

func (l *progressLog) has(substr string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.lines {
		if strings.Contains(line, substr) {
			return true
		}
	}
	return false
}

// TestIntegrationProvisionSurvivesResetConnections resets every connection to the API server
// while the builders start (the watches among them), twice, and then refuses connections for two
// seconds: provisioning must still succeed, say the API server was away, and teardown's wait must
// survive the same.
func TestIntegrationProvisionSurvivesResetConnections(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	env := newJobEnv(t, ctx)
	proxy := startResetProxy(t, apiServerAddress(t, env.saConfig))
	plan := env.plan(t, "resets", Inputs{Platforms: "linux/amd64,linux/arm64"})
	log := &progressLog{start: time.Now()}
	prov := &Provisioner{Client: kubernetes.NewForConfigOrDie(proxy.through(t, env.saConfig)), Progress: func(p Progress) { log.add(t, p) }}

	faultsDone := make(chan []int, 1)
	go func() {
		var killed []int
		// The first pod change means the pods exist and both watches are open.
		for !log.has("Pending") && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		killed = append(killed, proxy.resetAll())
		time.Sleep(300 * time.Millisecond)
		killed = append(killed, proxy.resetAll())
		proxy.setRefuse(true)
		killed = append(killed, proxy.resetAll())
		time.Sleep(2 * time.Second)
		proxy.setRefuse(false)
		faultsDone <- killed
	}()
	started := time.Now()
	result, err := prov.Provision(ctx, plan)
	elapsed := time.Since(started)
	if err != nil {
		t.Fatalf("Provision after %s with connections reset: %v", elapsed, err)
	}
	killed := <-faultsDone
	t.Logf("provisioned in %s; connections reset: %v", elapsed.Round(10*time.Millisecond), killed)
	if killed[0] == 0 {
		t.Fatal("no connection was open at the first reset: the test did not break a watch")
	}
	if len(result.Builders) != 2 {
		t.Fatalf("got %d builders", len(result.Builders))
	}
	if !log.has("the API server does not answer") || !log.has("the API server answers again after") {
		t.Errorf("progress did not report the API server's absence and return:\n%s", strings.Join(log.lines, "\n"))
	}

	// Teardown's wait, broken the same way.
	go func() {
		time.Sleep(500 * time.Millisecond)
		proxy.resetAll()
		proxy.setRefuse(true)
		proxy.resetAll()
		time.Sleep(time.Second)
		proxy.setRefuse(false)
	}()
	started = time.Now()
	report, err := prov.Teardown(ctx, plan.Namespace, plan.Key, plan.Owner, TeardownOptions{Wait: true, Secrets: []ObjectRef{result.Secret}})
	t.Logf("teardown with its wait broken took %s: %+v", time.Since(started).Round(10*time.Millisecond), report)
	if err != nil {
		t.Fatalf("Teardown: %v", err)
	}
	pods, err := env.admin.CoreV1().Pods(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if err != nil {
		t.Fatal(err)
	}
	secrets, err := env.admin.CoreV1().Secrets(env.ns).List(ctx, metav1.ListOptions{LabelSelector: JobSelector(plan.Key)})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != 0 || len(secrets.Items) != 0 {
		t.Errorf("left after teardown: %d pods, %d Secrets", len(pods.Items), len(secrets.Items))
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("test deadline")
	}
}
