package ft

import (
	"encoding/json"
	"os"
	"path/filepath"
)

// Files a run writes into its output directory.
const (
	TableFile = "results.md"
	JSONFile  = "results.json"
)

// Write puts the table, the JSON and the plots (one SVG per workload:
// client latency for the kvstore loads, output-hold latency for every
// workload) into dir, and returns the paths written.
func (rep *Report) Write(dir string) ([]string, error) {
	var paths []string
	put := func(name string, data []byte) error {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return err
		}
		paths = append(paths, p)
		return nil
	}
	if err := put(TableFile, []byte(rep.Markdown())); err != nil {
		return nil, err
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := put(JSONFile, append(js, '\n')); err != nil {
		return nil, err
	}
	for _, w := range rep.Workloads {
		var client, hold []Series
		for i := range rep.Rows {
			r := &rep.Rows[i]
			if r.Workload != w.Name {
				continue
			}
			client = append(client, Series{Name: r.Setup.Name, Hist: r.clientHist})
			hold = append(hold, Series{Name: r.Setup.Name, Hist: r.holdHist})
		}
		if w.Guest == "kvstore" {
			if err := put(w.Name+"-client-latency.svg", []byte(PlotSVG(w.Name+": client latency, first send to reply", client))); err != nil {
				return nil, err
			}
		}
		if err := put(w.Name+"-hold-latency.svg", []byte(PlotSVG(w.Name+": output-hold latency on the primary", hold))); err != nil {
			return nil, err
		}
	}
	return paths, nil
}
