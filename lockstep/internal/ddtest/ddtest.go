package ddtest

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite data-driven test files with the actual output")

// Cmd is one directive of a script.
type Cmd struct {
	Pos  string // file:line, for error messages
	Name string
	Args map[string]string
}

// Arg returns the value of key, or def when it is absent.
func (c *Cmd) Arg(key, def string) string {
	if v, ok := c.Args[key]; ok {
		return v
	}
	return def
}

// RunFile runs every directive of path through f and compares (or, with
// -rewrite, replaces) the expected output.
func RunFile(t *testing.T, path string, f func(t *testing.T, c *Cmd) string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(raw), "\n")
	var out strings.Builder
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			out.WriteString(line + "\n")
			continue
		}
		c := &Cmd{Pos: fmt.Sprintf("%s:%d", path, i+1), Args: map[string]string{}}
		fields := strings.Fields(line)
		c.Name = fields[0]
		for _, kv := range fields[1:] {
			k, v, _ := strings.Cut(kv, "=")
			c.Args[k] = v
		}
		if i+1 >= len(lines) || lines[i+1] != "----" {
			t.Fatalf("%s: directive %q must be followed by a ---- line", c.Pos, line)
		}
		i += 2
		var want []string
		for ; i < len(lines) && lines[i] != ""; i++ {
			want = append(want, lines[i])
		}
		got := strings.TrimRight(f(t, c), "\n")
		if !*rewrite && got != strings.Join(want, "\n") {
			t.Errorf("%s: %s\n--- got\n%s\n--- want\n%s", c.Pos, line, got, strings.Join(want, "\n"))
		}
		out.WriteString(line + "\n----\n")
		if got != "" {
			out.WriteString(got + "\n")
		}
		out.WriteString("\n")
	}
	if *rewrite {
		s := strings.TrimRight(out.String(), "\n") + "\n"
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
