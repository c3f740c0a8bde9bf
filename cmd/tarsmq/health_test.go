package main_test

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tarsmq/tarsmq/admin"
)

// The crash test: services publish health (mosquitto_pub -q 1 -r), the
// broker is killed with SIGKILL, restarted, and every acknowledged update is
// in `tarsmq health --json` and in a retained subscription.
func TestHealthSurvivesSIGKILL(t *testing.T) {
	needTool(t, "mosquitto_pub")
	needTool(t, "mosquitto_sub")
	s := startServe(t)
	services := []string{"stt-worker", "tts-worker", "llm-worker", "router", "camera"}
	for i, svc := range services {
		for _, event := range []string{"starting", "ready"} {
			msg := fmt.Sprintf(`{"id":"%s-%s","type":"health.status","ts":%d.5,"source":%q,"data":{"ok":%v,"event":%q}}`,
				svc, event, time.Now().Unix(), svc, i%2 == 0, event)
			out, err := exec.Command("mosquitto_pub", "--unix", s.socket, "-V", "mqttv311", "-i", svc, "-q", "1", "-r",
				"-t", "system/health/"+svc, "-m", msg).CombinedOutput()
			if err != nil {
				t.Fatalf("mosquitto_pub %s: %v %s", svc, err, out)
			}
		}
	}
	s.stop(t, syscall.SIGKILL)

	s = startServeIn(t, s.dir)
	out, errOut, code := run(t, serveEnv(s.dir, s.admin), "health", "--json")
	if code != 0 {
		t.Fatalf("tarsmq health: exit %d: %s", code, errOut)
	}
	var rep admin.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	got := map[string]admin.ServiceReport{}
	for _, svc := range rep.Services {
		got[svc.Source] = svc
	}
	for i, svc := range services {
		if r, ok := got[svc]; !ok || r.Event != "ready" || r.OK != (i%2 == 0) || !r.CurrentBoot {
			t.Errorf("%s after SIGKILL: %+v (found %v)", svc, r, ok)
		}
	}
	sub, err := exec.Command("mosquitto_sub", "--unix", s.socket, "-t", "system/health/#", "-C", fmt.Sprint(len(services)), "-W", "10", "-v").CombinedOutput()
	if err != nil {
		t.Fatalf("mosquitto_sub: %v %s", err, sub)
	}
	for _, svc := range services {
		if !strings.Contains(string(sub), "system/health/"+svc+" ") || !strings.Contains(string(sub), `"event":"ready"`) {
			t.Errorf("retained health of %s missing after SIGKILL:\n%s", svc, sub)
		}
	}

	// The table, one service's history, and with no broker running, the
	// store read directly.
	table, _, code := run(t, serveEnv(s.dir, s.admin), "health")
	if code != 0 || !strings.Contains(table, "stt-worker") || !strings.Contains(table, "ok (ready)") || !strings.Contains(table, "this boot") {
		t.Fatalf("table:\n%s", table)
	}
	hist, _, code := run(t, serveEnv(s.dir, s.admin), "health", "stt-worker", "--history")
	if code != 0 || strings.Count(hist, "\n") != 3 || !strings.Contains(hist, "ok (starting)") {
		t.Fatalf("history:\n%s", hist)
	}
	s.stop(t, syscall.SIGTERM)
	out, errOut, code = run(t, serveEnv(s.dir, s.admin), "health", "tts-worker", "--json")
	if code != 0 || !strings.Contains(errOut, "read from the store") {
		t.Fatalf("no broker: exit %d %s %s", code, out, errOut)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Services) != 1 || rep.Services[0].OK {
		t.Fatalf("from the store: %s %v", out, err)
	}
}

func TestPubSub(t *testing.T) {
	s := startServe(t)
	url := "unix://" + s.socket
	sub := exec.Command(tarsmq, "sub", "-t", "cli/#", "-C", "2", "--url", url)
	var out strings.Builder
	sub.Stdout, sub.Stderr = &out, &out
	if err := sub.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- sub.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for i, received := 0, false; !received; i++ { // until the subscriber has two messages
		_, errOut, code := run(t, nil, "pub", "--url", url, "--id", "cli", "-t", "cli/x", "--type", "cli.test", "-d", fmt.Sprintf(`{"n":%d}`, i), "-q", "1")
		if code != 0 {
			t.Fatalf("pub: %s", errOut)
		}
		select {
		case err := <-done:
			if err != nil || strings.Count(out.String(), "cli/x cli.test from cli {\"n\":") != 2 {
				t.Fatalf("sub: %v\n%s", err, out.String())
			}
			received = true
		case <-time.After(100 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatalf("sub got:\n%s", out.String())
			}
		}
	}
	_, errOut, code := run(t, nil, "pub", "--url", url, "--id", "cli", "-t", "system/health/other", "--type", "health.status", "-d", `{"ok":true}`, "-q", "1")
	if code != 1 || !strings.Contains(errOut, "0x87") {
		t.Fatalf("spoofed health: exit %d %s", code, errOut)
	}
}
