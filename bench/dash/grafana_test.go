package dash

import (
	"encoding/json"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// exprs returns every "expr" in a Grafana dashboard, and the variable
// queries of its templating.
func exprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var out []string
	var walk func(any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return out
}

var metricRef = regexp.MustCompile(`\b[a-zA-Z_:][a-zA-Z0-9_:]*\b`)

// unknownMetrics returns the names in expr that look like ftvm metrics
// (ftvm_...) but are not exported, the series of a histogram counted
// (_bucket, _count, _sum).
func unknownMetrics(expr string, exported map[string]string) []string {
	var bad []string
	for _, w := range metricRef.FindAllString(expr, -1) {
		if !strings.HasPrefix(w, "ftvm_") {
			continue
		}
		if _, ok := exported[w]; ok {
			continue
		}
		ok := false
		for _, suf := range []string{"_bucket", "_count", "_sum"} {
			if base, cut := strings.CutSuffix(w, suf); cut && exported[base] == "histogram" {
				ok = true
			}
		}
		if !ok {
			bad = append(bad, w)
		}
	}
	return bad
}

// TestGrafanaDashboard checks that every expression of grafana/ftvm.json
// names only metrics the daemon exports, and that each of those is shown.
func TestGrafanaDashboard(t *testing.T) {
	exported := map[string]string{}
	for _, m := range Metrics {
		exported[m.Name] = m.Type
	}
	// The checker must catch a misspelt name and a counter without
	// _total, or it proves nothing.
	if bad := unknownMetrics(`rate(ftvm_failovers[1m]) + ftvm_output_hold_seconds_bucket + ftvm_epoch_count`, exported); strings.Join(bad, ",") != "ftvm_failovers,ftvm_epoch_count" {
		t.Fatalf("the checker found %v in a planted expression, want ftvm_failovers and ftvm_epoch_count", bad)
	}
	es := exprs(t, "grafana/ftvm.json")
	if len(es) < 10 {
		t.Fatalf("grafana/ftvm.json has %d expressions: is it the dashboard?", len(es))
	}
	used := map[string]bool{}
	for _, e := range es {
		if bad := unknownMetrics(e, exported); len(bad) > 0 {
			t.Errorf("grafana/ftvm.json: %q names %v, which the daemon does not export", e, bad)
		}
		for _, w := range metricRef.FindAllString(e, -1) {
			for _, suf := range []string{"_bucket", "_count", "_sum"} {
				w = strings.TrimSuffix(w, suf)
			}
			used[w] = true
		}
	}
	var unused []string
	for name := range exported {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Errorf("grafana/ftvm.json shows nothing of %v", unused)
	}
}
