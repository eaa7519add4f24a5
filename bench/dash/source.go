package dash

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
)

// Source is one host the dashboard watches.
type Source struct {
	// Name is how the page calls the host.
	Name string
	// Fetch asks the host for its sample; an error means the host does
	// not answer (a daemon down, or not started yet).
	Fetch func(ctx context.Context) (*Sample, error)
}

// ControlSource asks the daemon whose control socket is at path (ftvm
// primary/secondary --control) for its sample. An empty name is the
// socket's file name without ".sock".
func ControlSource(name, path string) Source {
	if name == "" {
		name = strings.TrimSuffix(filepath.Base(path), ".sock")
	}
	return Source{Name: name, Fetch: func(ctx context.Context) (*Sample, error) { return fetchControl(ctx, path) }}
}

// ParseSources reads the --control list of ftvm dash: comma-separated
// PATH or NAME=PATH.
func ParseSources(list string) ([]Source, error) {
	var out []Source
	seen := map[string]bool{}
	for _, item := range strings.Split(list, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		name, path, ok := strings.Cut(item, "=")
		if !ok {
			name, path = "", item
		}
		if path == "" {
			return nil, fmt.Errorf("%q: give a control socket path after the name (NAME=PATH)", item)
		}
		s := ControlSource(name, path)
		if seen[s.Name] {
			return nil, fmt.Errorf("two hosts are called %q: name them (a=PATH,b=PATH)", s.Name)
		}
		seen[s.Name] = true
		out = append(out, s)
	}
	if len(out) == 0 {
		return nil, errors.New("no control socket given: --control PATH[,PATH] (one per host of the pair)")
	}
	return out, nil
}

func fetchControl(ctx context.Context, path string) (*Sample, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, SampleRequest+"\n"); err != nil {
		return nil, err
	}
	var raw json.RawMessage
	if err := json.NewDecoder(c).Decode(&raw); err != nil {
		return nil, fmt.Errorf("reading the sample from %s: %w", path, err)
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(raw, &e) == nil && e.Error != "" {
		return nil, fmt.Errorf("%s: %s (is the daemon older than this ftvm?)", path, e.Error)
	}
	var s Sample
	if err := json.Unmarshal(raw, &s); err != nil {
		return nil, fmt.Errorf("sample from %s: %w", path, err)
	}
	return &s, nil
}
