package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Report is what `ftvm cluster status` shows: the pool's hosts and VMs.
type Report struct {
	Hosts []HostReport `json:"hosts"`
	VMs   []VMReport   `json:"vms"`
	// Unprotected names the VMs whose primary does not report a
	// secondary in step right now (served but unprotected, being
	// re-protected, or not served at all).
	Unprotected []string `json:"unprotected"`
	Leader      string   `json:"placement_leader"` // the host that places, "" if none
	Revision    int64    `json:"etcd_revision"`
}

// HostReport is one live host.
type HostReport struct {
	Name  string   `json:"name"`
	Addr  string   `json:"addr"`
	Slots int      `json:"slots"`
	Free  int      `json:"free"`
	VMs   []string `json:"vms"` // the VMs placed on it
	Since string   `json:"since"`
}

// VMReport is one VM.
type VMReport struct {
	ID        string `json:"id"`
	Primary   string `json:"primary"`   // placed primary, "" if not placed
	Secondary string `json:"secondary"` // placed secondary, "" if none
	Holder    string `json:"holder"`    // the host the arbiter's lease names, "" if none
	Epoch     uint64 `json:"epoch"`
	Protected bool   `json:"protected"`
	// State says in words where the VM stands.
	State string `json:"state"`
	// Daemons are the state each host's daemon of the VM published.
	Daemons map[string]DaemonState `json:"daemons"`
}

// Status reads the pool and describes it.
func Status(ctx context.Context, cli *clientv3.Client, k Keys) (*Report, error) {
	p, err := Read(ctx, cli, k)
	if err != nil {
		return nil, err
	}
	r := Describe(p)
	if g, err := cli.Get(ctx, k.Leader(), clientv3.WithFirstCreate()...); err == nil && len(g.Kvs) > 0 {
		r.Leader = string(g.Kvs[0].Value)
	}
	return r, nil
}

// Describe is the Report of one read of the pool.
func Describe(p *Pool) *Report {
	r := &Report{Revision: p.Rev, Hosts: []HostReport{}, VMs: []VMReport{}, Unprotected: []string{}}
	on := map[string][]string{}
	for _, id := range p.VMIDs() {
		v := p.VMs[id]
		vr := VMReport{ID: id, Holder: v.Holder, Epoch: v.Epoch, Protected: v.Protected(), Daemons: v.At}
		if v.Place != nil {
			vr.Primary, vr.Secondary = v.Place.Primary, v.Place.Secondary
			on[vr.Primary] = append(on[vr.Primary], id)
			if vr.Secondary != "" {
				on[vr.Secondary] = append(on[vr.Secondary], id+" (secondary)")
			}
		}
		vr.State = vmState(p, v)
		if !vr.Protected {
			r.Unprotected = append(r.Unprotected, id)
		}
		r.VMs = append(r.VMs, vr)
	}
	for _, name := range p.HostNames() {
		h := p.Hosts[name]
		r.Hosts = append(r.Hosts, HostReport{Name: name, Addr: h.Addr, Slots: h.Slots, Free: h.Free, VMs: on[name], Since: h.Since})
	}
	return r
}

func vmState(p *Pool, v *VM) string {
	switch {
	case v.Place == nil:
		return "not placed: no live host has a free slot"
	case v.Protected():
		return "protected"
	case !isLive(p, v.Place.Primary):
		if v.Place.Secondary != "" && isLive(p, v.Place.Secondary) {
			if st, ok := v.At[v.Place.Secondary]; ok && st.Role != "halted" {
				return "primary's host is dead: the secondary takes over once the dead primary's lease runs out"
			}
			return "LOST: the primary's host is dead and the secondary's daemon stopped (a secondary that may be behind halts rather than take over): restart the VM from the newest disk as the README says"
		}
		return "LOST: no live host holds it (its disks are on dead hosts; restart it as the README says)"
	case v.Holder != "" && v.Holder != v.Place.Primary:
		return "the arbiter's lease names " + v.Holder + ": placement moves the primary there"
	case v.Holder == "":
		return "not served yet: the primary is starting"
	case v.Place.Secondary == "":
		return "UNPROTECTED: served, no live host with a free slot for a secondary"
	default:
		return "UNPROTECTED: served, secondary joining on " + v.Place.Secondary
	}
}

func isLive(p *Pool, h string) bool { _, ok := p.Hosts[h]; return ok }

// WriteText writes the report as tables.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "HOST\tADDRESS\tSLOTS\tFREE\tVMS\n")
	for _, h := range r.Hosts {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\n", h.Name, h.Addr, h.Slots, h.Free, strings.Join(h.VMs, ", "))
	}
	fmt.Fprintf(tw, "\nVM\tPRIMARY\tSECONDARY\tEPOCH\tSTATE\n")
	for _, v := range r.VMs {
		prim := v.Primary
		if v.Holder != "" && v.Holder != v.Primary {
			prim += " (" + v.Holder + " holds the lease)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", v.ID, dash(prim), dash(v.Secondary), v.Epoch, v.State)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	leader := r.Leader
	if leader == "" {
		leader = "none (no host runs)"
	}
	un := "none"
	if len(r.Unprotected) > 0 {
		un = strings.Join(r.Unprotected, ", ")
	}
	_, err := fmt.Fprintf(w, "\nunprotected now: %s\nplacement leader: %s\n", un, leader)
	return err
}

// WriteJSON writes the report as one JSON object.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
