package acl

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tarsmq/tarsmq/internal/topic"
)

// robotYAML is a default-deny configuration like a robot's.
const robotYAML = `
default: deny
rules:
  - who: "*"                       # each service writes only its own health
    read: [system/#, robot/+/status, "%c/inbox/#"]
    write: [system/health/%u, system/keepalive/%c, svc-%u/#]
    deny_read: [system/secrets/#]
  - who: stt
    read: [audio/#]
    write: [stt/#]
  - who: planner
    read: [stt/#, robot/#]
    write: [robot/+/cmd, jobs/%c/#]
    deny_write: [robot/estop/cmd]
  - who: anonymous
    read: [public/#]
    deny_read: [system/#]
  - who: root
    read: ["#"]
  - who: admin
    read: [$SYS/#]
`

// openYAML is a default-allow configuration.
const openYAML = `
default: allow
rules:
  - who: "*"
    deny_read: [secret/#]
    deny_write: [system/#]
  - who: robot
    write: [system/health/%u]
`

func mustNew(t testing.TB, src string) *ACL {
	t.Helper()
	var c Config
	if err := yaml.Unmarshal([]byte(src), &c); err != nil {
		t.Fatal(err)
	}
	a, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

var (
	stt     = Who{Identity: "stt", ClientID: "stt-1"}
	planner = Who{Identity: "planner", ClientID: "p1"}
	anon    = Who{ClientID: "cam"}
	root    = Who{Identity: "root", ClientID: "r"}
	admin   = Who{Identity: "admin", ClientID: "a"}
)

type checkCase struct {
	who   Who
	op    string // "r", "w" or "s"
	topic string
	want  bool
}

func run(t *testing.T, a *ACL, cases []checkCase) {
	t.Helper()
	for _, c := range cases {
		var got bool
		switch c.op {
		case "r":
			got = a.CanRead(c.who, c.topic)
		case "w":
			got = a.CanWrite(c.who, c.topic)
		case "s":
			got = a.CanSubscribe(c.who, c.topic)
		}
		if got != c.want {
			t.Errorf("%s %+v %q = %v, want %v", map[string]string{"r": "CanRead", "w": "CanWrite", "s": "CanSubscribe"}[c.op], c.who, c.topic, got, c.want)
		}
	}
}

func TestReadWrite(t *testing.T) {
	run(t, mustNew(t, robotYAML), []checkCase{
		// %u: one "*" rule gives each service its own health topic.
		{stt, "w", "system/health/stt", true},
		{planner, "w", "system/health/planner", true},
		{stt, "w", "system/health/planner", false},
		{stt, "w", "system/health/stt/x", false},
		{Who{Identity: "ghost", ClientID: "g"}, "w", "system/health/ghost", true}, // unnamed identity: "*" rules only
		{Who{Identity: "ghost", ClientID: "g"}, "r", "audio/x", false},
		{stt, "w", "svc-stt/a/b", true}, // %u inside a level
		{stt, "w", "svc-planner/a", false},
		// %c.
		{planner, "w", "jobs/p1/a", true},
		{planner, "w", "jobs/p1", true},
		{planner, "w", "jobs/p2/a", false},
		{stt, "w", "system/keepalive/stt-1", true},
		{stt, "w", "system/keepalive/p1", false},
		{stt, "r", "stt-1/inbox/x", true},
		{stt, "r", "p1/inbox/x", false},
		// Deny beats allow, within a rule and across rules.
		{planner, "w", "robot/arm/cmd", true},
		{planner, "w", "robot/estop/cmd", false},
		{stt, "r", "system/health/x", true},
		{stt, "r", "system/secrets/key", false},
		{root, "r", "system/secrets/key", false},
		{anon, "r", "system/health/x", false}, // anonymous deny beats "*" allow
		// Default deny.
		{stt, "r", "video/raw", false},
		{stt, "w", "audio/raw", false},
		// Anonymous: "*" and "anonymous" rules; %u never matches.
		{anon, "r", "public/news", true},
		{anon, "r", "robot/arm/status", true},
		{anon, "w", "system/keepalive/cam", true},
		{anon, "w", "system/health/", false},
		{anon, "w", "svc-/x", false},
		{stt, "r", "public/news", false},
		{Who{Identity: "anonymous", ClientID: "x"}, "r", "public/news", false}, // reserved name: "*" rules only
		{Who{Identity: "anonymous", ClientID: "x"}, "r", "system/x", true},
		// Values that could widen or move a filter never match.
		{Who{Identity: "+", ClientID: "c"}, "w", "system/health/stt", false},
		{Who{Identity: "#", ClientID: "c"}, "w", "system/health/stt", false},
		{Who{Identity: "a/b", ClientID: "c"}, "w", "system/health/a/b", false},
		{Who{Identity: "a\x00", ClientID: "c"}, "w", "svc-a\x00/x", false},
		{Who{Identity: "x", ClientID: "#"}, "w", "system/keepalive/other", false},
		{Who{Identity: "x", ClientID: "+"}, "w", "system/keepalive/other", false},
		{Who{Identity: "x", ClientID: "a/b"}, "w", "system/keepalive/a/b", false},
		{Who{Identity: "x", ClientID: "a/#"}, "r", "a/inbox/x", false},
		{Who{Identity: "x", ClientID: ""}, "w", "system/keepalive/", false},
		{Who{Identity: "x", ClientID: "$SYS"}, "r", "$SYS/inbox/x", false}, // no $ topics through %c/...
		{Who{Identity: "x", ClientID: "a$"}, "r", "a$/inbox/x", true},
		// $ topics: only filters starting with $ match them.
		{root, "r", "a/b", true},
		{root, "r", "$SYS/broker/uptime", false},
		{admin, "r", "$SYS/broker/uptime", true},
		{stt, "r", "$SYS/system/x", false},
		// Topic names that are no topic names.
		{root, "r", "", false},
		{root, "r", "a/+", false},
		{root, "r", "a/#", false},
		{root, "r", "a\x00", false},
	})
}

func TestDefaultAllow(t *testing.T) {
	robot := Who{Identity: "robot", ClientID: "r1"}
	run(t, mustNew(t, openYAML), []checkCase{
		{stt, "w", "foo/bar", true},
		{anon, "r", "foo/bar", true},
		{anon, "w", "system/x", false},
		{robot, "w", "system/health/robot", false}, // deny beats allow
		{stt, "r", "secret/a", false},
		{stt, "r", "$SYS/x", true},
		{stt, "w", "a/+", false}, // even by default
		{stt, "s", "#", true},
		{stt, "s", "secret/#", false},
		{stt, "s", "secret/a/+", false},
		{stt, "s", "secret", false}, // secret/# matches secret itself
		{stt, "s", "secrets/#", true},
		{stt, "s", "+/a", true},
		{stt, "s", "$share/g/secret/#", false},
	})
}

func TestCanSubscribe(t *testing.T) {
	r1 := Who{Identity: "x", ClientID: "r1"}
	run(t, mustNew(t, robotYAML), []checkCase{
		// "#" is allowed to whoever may read something; delivery is checked per message.
		{planner, "s", "#", true},
		{stt, "s", "#", true},
		{anon, "s", "#", true},
		{stt, "s", "+/health/#", true},
		{stt, "s", "system/health/+", true},
		{stt, "s", "video/#", false},
		{stt, "s", "+/raw", true}, // audio/raw is readable
		{stt, "s", "video/+/raw", false},
		// Inside a deny_read filter.
		{stt, "s", "system/secrets/#", false},
		{stt, "s", "system/secrets/a", false},
		{stt, "s", "system/+/a", true},
		{anon, "s", "system/#", false},
		{anon, "s", "+/health/#", true}, // public/health/... is readable
		// Placeholders.
		{r1, "s", "r1/inbox/#", true},
		{r1, "s", "r2/inbox/#", false},
		{r1, "s", "+/inbox/x", true},
		{Who{Identity: "x", ClientID: "$SYS"}, "s", "$SYS/inbox/#", false},
		{Who{Identity: "x", ClientID: "#"}, "s", "#/inbox/#", false},
		// $ topics.
		{root, "s", "$SYS/#", false},
		{root, "s", "$SYS/+", false},
		{admin, "s", "$SYS/#", true},
		{admin, "s", "$SYS/broker/+", true},
		// Shared subscriptions are judged by their filter.
		{stt, "s", "$share/g/audio/#", true},
		{stt, "s", "$SHARE/g/video/#", false},
		{stt, "s", "$share/g", false},
		{stt, "s", "$share//audio/x", false},
		{stt, "s", "$share/g+/audio/x", false},
		// Invalid filters.
		{root, "s", "", false},
		{root, "s", "a/#/b", false},
		{root, "s", "a+", false},
		{root, "s", "a/b#", false},
		{root, "s", "a\x00", false},
	})
	// A subscription whose every readable part is denied is refused, though
	// it is inside no deny_read filter itself.
	run(t, mustNew(t, "default: deny\nrules:\n  - {who: v, read: [vault/#], deny_read: [vault/#]}\n"),
		[]checkCase{{Who{Identity: "v"}, "s", "#", false}, {Who{Identity: "v"}, "s", "vault/a", false}})
}

func TestValidate(t *testing.T) {
	rule := func(who string, read ...string) Rule { return Rule{Who: who, Read: read} }
	cases := []struct {
		c    Config
		want []string // "" means valid
	}{
		{Config{Default: "deny", Rules: []Rule{rule("*", "a/#", "system/health/%u", "jobs/%c/#", "svc-%u-%c/+", "$SYS/#")}}, nil},
		{Config{Default: "allow"}, nil},
		{Config{Default: ""}, []string{`auth.acl.default: "" must be allow or deny`}},
		{Config{Default: "Deny"}, []string{`auth.acl.default: "Deny" must be allow or deny`}},
		{Config{Default: "deny", Rules: []Rule{rule("", "a")}}, []string{`auth.acl.rules[0].who: empty; name an identity`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "a"), {Who: "x"}}},
			[]string{`auth.acl.rules[1]: rule for "x" has no read, write, deny_read or deny_write filters; add one or remove the rule`}},
		{Config{Default: "deny", Rules: []Rule{{Who: "a", Write: []string{"ok", "a/#/b"}}}},
			[]string{`auth.acl.rules[0].write[1]: "a/#/b" is not a topic filter: "#" must be the whole last level, as in robot/#`}},
		{Config{Default: "deny", Rules: []Rule{{Who: "a", DenyRead: []string{"a/b#"}}}}, []string{`auth.acl.rules[0].deny_read[0]: "a/b#" is not a topic filter: "#"`}},
		{Config{Default: "deny", Rules: []Rule{{Who: "a", DenyWrite: []string{"a+"}}}},
			[]string{`auth.acl.rules[0].deny_write[0]: "a+" is not a topic filter: "+" must be a whole level, as in robot/+/status`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "svc-%u+")}}, []string{`auth.acl.rules[0].read[0]: "svc-%u+" is not a topic filter: "+" must be`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "")}}, []string{`auth.acl.rules[0].read[0]: "" is empty; write e.g.`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "x/%U")}}, []string{`auth.acl.rules[0].read[0]: "x/%U" has "%U", which is no placeholder: use %u for the identity or %c for the client id`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "x/%")}}, []string{`has "%", which is no placeholder`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "$share/g/a")}}, []string{`auth.acl.rules[0].read[0]: "$share/g/a" is a shared subscription; write the topic filter without $share/{group}/`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "a\x00")}}, []string{`contains a NUL character`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", "\xff")}}, []string{`is not valid UTF-8`}},
		{Config{Default: "deny", Rules: []Rule{rule("a", strings.Repeat("a", 65536))}}, []string{`is longer than 65535 bytes`}},
		{Config{Default: "deny", Rules: []Rule{rule("anonymous", "x/%c", "x/%u")}},
			[]string{`auth.acl.rules[0].read[1]: "x/%u" uses %u but anonymous clients have no identity, so it never matches; use %c or a rule for "*"`}},
		{Config{Default: "x", Rules: []Rule{rule("", "a/#/b")}}, []string{"auth.acl.default:", "auth.acl.rules[0].who:", "auth.acl.rules[0].read[0]:"}},
	}
	for i, c := range cases {
		err := c.c.Validate()
		if _, nerr := New(c.c); (nerr == nil) != (err == nil) {
			t.Errorf("case %d: New error %v, Validate error %v", i, nerr, err)
		}
		if len(c.want) == 0 {
			if err != nil {
				t.Errorf("case %d: unexpected error: %v", i, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("case %d: no error, want %q", i, c.want)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("case %d: error %q does not contain %q", i, err, w)
			}
		}
		if n := strings.Count(err.Error(), "auth.acl."); n != len(c.want) && len(c.want) > 1 {
			t.Errorf("case %d: %d errors, want %d: %v", i, n, len(c.want), err)
		}
	}
}

// TestMeetCovers checks meet and covers against Match over every topic of
// up to 4 levels from a small alphabet, for every filter of up to 3.
func TestMeetCovers(t *testing.T) {
	filters := levels([]string{"a", "b", "$s", "+", "#"}, 3, true)
	topics := levels([]string{"a", "b", "$s", "c"}, 4, false)
	for _, f := range filters {
		for _, g := range filters {
			m, ok := meet(f, g)
			if ok != topic.Intersects(f, g) {
				t.Fatalf("meet(%q, %q) ok = %v, Intersects disagrees", f, g, ok)
			}
			cov := true
			for _, tp := range topics {
				both := topic.Match(f, tp) && topic.Match(g, tp)
				if ok && topic.Match(m, tp) != both {
					t.Fatalf("meet(%q, %q) = %q: Match(.., %q) = %v, both match = %v", f, g, m, tp, !both, both)
				}
				if topic.Match(g, tp) && !topic.Match(f, tp) {
					cov = false
				}
			}
			if got := covers(f, g); got != cov {
				t.Errorf("covers(%q, %q) = %v, brute force says %v", f, g, got, cov)
			}
		}
	}
}

// levels returns every "/"-joined sequence of 1 to n of the given levels;
// with filter, "#" only last.
func levels(ls []string, n int, filter bool) []string {
	out := []string{""}
	var all []string
	for range n {
		var next []string
		for _, p := range out {
			if strings.HasSuffix(p, "#") {
				continue
			}
			for _, l := range ls {
				s := l
				if p != "" {
					s = p + "/" + l
				}
				if filter || l != "#" {
					next = append(next, s)
				}
			}
		}
		all, out = append(all, next...), next
	}
	return all
}

func TestNoAllocs(t *testing.T) {
	a := mustNew(t, robotYAML)
	for _, c := range []struct {
		w     Who
		topic string
	}{{planner, "robot/arm/status"}, {stt, "system/health/stt"}, {stt, "svc-stt/x"}, {root, "r/inbox/x"}, {anon, "video/x"}} {
		if n := testing.AllocsPerRun(100, func() { a.CanRead(c.w, c.topic); a.CanWrite(c.w, c.topic) }); n != 0 {
			t.Errorf("%+v %q: %v allocations", c.w, c.topic, n)
		}
	}
}

func TestConcurrent(t *testing.T) {
	a := mustNew(t, robotYAML)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			w := Who{Identity: fmt.Sprint("svc", i%3), ClientID: fmt.Sprint("c", i)}
			for j := range 1000 {
				tp := fmt.Sprintf("system/health/svc%d", j%3)
				if a.CanWrite(w, tp) != (j%3 == i%3) {
					t.Errorf("%+v %s", w, tp)
				}
				a.CanRead(w, tp)
				a.CanSubscribe(w, "+/health/#")
			}
		})
	}
	wg.Wait()
}

// FuzzACL checks that no input panics and that, for a topic name, reading
// and subscribing to exactly it agree.
func FuzzACL(f *testing.F) {
	for _, s := range [][3]string{
		{"stt", "stt-1", "system/health/stt"}, {"", "cam", "public/#"}, {"+", "#", "system/health/+"},
		{"a/b", "$SYS", "$SYS/inbox/x"}, {"planner", "p1", "$share/g/jobs/p1/#"}, {"x", "a\x00", "a/\x00"},
		{"root", "r", "$SYS/broker"}, {"svc", "s", "svc-svc/%u"}, {"anonymous", "", "//"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	robot := mustNew(f, robotYAML)
	open := mustNew(f, openYAML)
	f.Fuzz(func(t *testing.T, identity, clientID, s string) {
		w := Who{Identity: identity, ClientID: clientID}
		for _, a := range []*ACL{robot, open} {
			a.CanWrite(w, s)
			r, sub := a.CanRead(w, s), a.CanSubscribe(w, s)
			first, _, _ := strings.Cut(s, "/")
			if validTopic(s) && !strings.EqualFold(first, "$share") && r != sub {
				t.Errorf("%+v %q: CanRead %v, CanSubscribe %v", w, s, r, sub)
			}
		}
	})
}

// benchACL is about 20 rules, most for named services.
func benchACL(b *testing.B) *ACL {
	var sb strings.Builder
	sb.WriteString(robotYAML)
	for i := range 14 {
		fmt.Fprintf(&sb, "  - who: svc%d\n    read: [svc%d/+/in, shared/%d/#]\n    write: [svc%d/out/#]\n    deny_read: [shared/%d/private]\n", i, i, i, i, i)
	}
	return mustNew(b, sb.String())
}

func BenchmarkCanRead(b *testing.B) {
	a := benchACL(b)
	cases := []struct {
		name  string
		w     Who
		topic string
	}{
		{"named/allowed", planner, "robot/arm/joint/3/state"},
		{"named/default", Who{Identity: "svc7", ClientID: "s7"}, "video/raw/frame"},
		{"star/placeholder", Who{Identity: "svc3", ClientID: "s3"}, "s3/inbox/req"},
		{"anonymous", anon, "public/news/today"},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				a.CanRead(c.w, c.topic)
			}
		})
	}
}

func BenchmarkCanWrite(b *testing.B) {
	a := benchACL(b)
	b.ReportAllocs()
	for b.Loop() {
		a.CanWrite(stt, "system/health/stt")
	}
}

func BenchmarkCanSubscribe(b *testing.B) {
	a := benchACL(b)
	b.ReportAllocs()
	for b.Loop() {
		a.CanSubscribe(stt, "+/health/#")
	}
}

// A deny rule with %c cannot be lifted by an odd client id: it then denies
// everything; an anonymous client is not concerned by a %u deny.
func TestPoisonedDenyFailsClosed(t *testing.T) {
	a := mustNew(t, `
default: allow
rules:
  - who: "*"
    deny_write: ["jobs/%c/#"]
    deny_read: ["inbox/%u/#"]
`)
	odd := Who{Identity: "stt", ClientID: "a/#"}
	anonymous := Who{ClientID: "x"}
	run(t, a, []checkCase{
		{Who{Identity: "stt", ClientID: "c1"}, "w", "jobs/c1/a", false},
		{Who{Identity: "stt", ClientID: "c1"}, "w", "jobs/c2/a", true},
		{odd, "w", "jobs/anything", false},
		{odd, "w", "weather", false},
		{anonymous, "r", "inbox/x/1", true},
		{anonymous, "s", "inbox/#", true},
		{Who{Identity: "a/b", ClientID: "x"}, "r", "weather", false},
		{Who{Identity: "a/b", ClientID: "x"}, "s", "weather/#", false},
	})
}
