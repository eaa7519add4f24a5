package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is the prefix of every key, the same as the etcd
// arbiter's, so that the pool and the arbiter's records of its VMs sit
// side by side (<prefix>pool/ and <prefix>vm/).
const DefaultPrefix = "/ftvm/"

var namePattern = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$`)

// CheckName says whether s can name a host or a VM of the pool: 1 to 64
// letters, digits, '.', '_' or '-', not starting with '.' or '-' (it is a
// piece of an etcd key, of a file name and of a daemon's --vm-id).
func CheckName(what, s string) error {
	if !namePattern.MatchString(s) {
		return fmt.Errorf("%s %q is not valid: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'", what, s)
	}
	return nil
}

// HostInfo is the value of <prefix>pool/host/<name>: a live host of the
// pool (the key is under the host's lease).
type HostInfo struct {
	// Addr is the address other hosts reach this one at (an IP or a
	// name, no port): the --listen host of its primaries.
	Addr string `json:"addr"`
	// Slots is how many VMs (primaries and secondaries alike) the host
	// takes at most.
	Slots int `json:"slots"`
	// Free is Slots less the VMs the host runs a daemon of now, as the
	// host last counted them (placement counts from the placements).
	Free  int    `json:"free"`
	Since string `json:"since"` // RFC 3339, when the host registered
}

// VMSpec is the value of <prefix>pool/vm/<id>/spec: what every host that
// runs a daemon of the VM gives it.
type VMSpec struct {
	// Port is the TCP port each of the VM's daemons listens on for its
	// secondary (its --listen is the host's Addr and this port).
	Port int `json:"port"`
	// Args are daemon flags both roles take (--guest, --cmdline, --tap,
	// --mac, --mem, --mode, --etcd-lease-ttl, ...). The host adds the
	// flags that depend on the host and the role.
	Args []string `json:"args"`
}

// Placement is the value of <prefix>pool/vm/<id>/place: which host should
// run the VM's primary and which its secondary. Only the placement leader
// writes it.
type Placement struct {
	Primary   string `json:"primary"`
	Secondary string `json:"secondary,omitempty"` // "" while none is placed
	Gen       uint64 `json:"gen"`                 // 1 for the first placement, one more at each change
}

// DaemonState is the value of <prefix>pool/vm/<id>/at/<host>, under that
// host's lease: what the host's daemon of the VM said last of itself
// (ftvm status), written whenever it changes.
type DaemonState struct {
	Role      string `json:"role"` // primary, secondary, candidate, halted; "starting" before it answers
	Protected bool   `json:"protected"`
	Synced    bool   `json:"synced"` // a secondary: in step with its primary
	Epoch     uint64 `json:"epoch"`
	PID       int    `json:"pid"`
	// AllowPeers are the hosts the daemon accepts as its secondary (its
	// --allow-peers, comma-separated; set by the host, not the daemon):
	// placement picks a secondary among them only.
	AllowPeers string `json:"allow_peers,omitempty"`
}

// VM is what the pool knows of one VM.
type VM struct {
	ID       string
	Spec     VMSpec
	Place    *Placement // nil while not placed
	PlaceRev int64      // ModRevision of place, 0 while not placed
	// Holder is the host the arbiter's lease key names (the host acting
	// as the VM's primary now), "" while none holds it; Epoch its epoch.
	Holder string
	Epoch  uint64
	// At is each host's daemon of the VM, by host name.
	At map[string]DaemonState
}

// Protected says whether the VM's primary reports a secondary in step.
func (v *VM) Protected() bool {
	if v.Place == nil || v.Holder == "" || v.Holder != v.Place.Primary {
		return false
	}
	s, ok := v.At[v.Holder]
	return ok && s.Role == "primary" && s.Protected
}

// Pool is one consistent read of every key of the pool and of the
// arbiter's lease keys of its VMs.
type Pool struct {
	Hosts map[string]HostInfo
	VMs   map[string]*VM
	Rev   int64 // the etcd revision of the read
}

// VMIDs are the VMs' names in order.
func (p *Pool) VMIDs() []string {
	ids := make([]string, 0, len(p.VMs))
	for id := range p.VMs {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// HostNames are the live hosts' names in order.
func (p *Pool) HostNames() []string {
	names := make([]string, 0, len(p.Hosts))
	for h := range p.Hosts {
		names = append(names, h)
	}
	sort.Strings(names)
	return names
}

// Keys names the keys of one pool.
type Keys struct{ Prefix string }

func (k Keys) prefix() string {
	if k.Prefix == "" {
		return DefaultPrefix
	}
	return k.Prefix
}

func (k Keys) Pool() string                  { return k.prefix() + "pool/" }
func (k Keys) Hosts() string                 { return k.prefix() + "pool/host/" }
func (k Keys) Host(h string) string          { return k.Hosts() + h }
func (k Keys) VMs() string                   { return k.prefix() + "pool/vm/" }
func (k Keys) Spec(vm string) string         { return k.VMs() + vm + "/spec" }
func (k Keys) Place(vm string) string        { return k.VMs() + vm + "/place" }
func (k Keys) At(vm, h string) string        { return k.VMs() + vm + "/at/" + h }
func (k Keys) Leader() string                { return k.prefix() + "pool/leader" }
func (k Keys) ArbiterVMs() string            { return k.prefix() + "vm/" }
func (k Keys) ArbiterLease(vm string) string { return k.ArbiterVMs() + vm + "/lease" }

// Read reads the pool in one etcd request (one revision).
func Read(ctx context.Context, cli *clientv3.Client, k Keys) (*Pool, error) {
	resp, err := cli.Get(ctx, k.prefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("reading the pool from etcd: %w", err)
	}
	p := &Pool{Hosts: map[string]HostInfo{}, VMs: map[string]*VM{}, Rev: resp.Header.Revision}
	vm := func(id string) *VM {
		v := p.VMs[id]
		if v == nil {
			v = &VM{ID: id, At: map[string]DaemonState{}}
			p.VMs[id] = v
		}
		return v
	}
	holders := map[string]struct {
		Epoch  uint64 `json:"epoch"`
		Holder string `json:"holder"`
	}{}
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		bad := func(err error) error { return fmt.Errorf("etcd key %s: %w", key, err) }
		switch {
		case strings.HasPrefix(key, k.Hosts()):
			var h HostInfo
			if err := json.Unmarshal(kv.Value, &h); err != nil {
				return nil, bad(err)
			}
			p.Hosts[strings.TrimPrefix(key, k.Hosts())] = h
		case strings.HasPrefix(key, k.VMs()):
			id, rest, _ := strings.Cut(strings.TrimPrefix(key, k.VMs()), "/")
			switch {
			case rest == "spec":
				if err := json.Unmarshal(kv.Value, &vm(id).Spec); err != nil {
					return nil, bad(err)
				}
			case rest == "place":
				var pl Placement
				if err := json.Unmarshal(kv.Value, &pl); err != nil {
					return nil, bad(err)
				}
				v := vm(id)
				v.Place, v.PlaceRev = &pl, kv.ModRevision
			case strings.HasPrefix(rest, "at/"):
				var s DaemonState
				if err := json.Unmarshal(kv.Value, &s); err != nil {
					return nil, bad(err)
				}
				vm(id).At[strings.TrimPrefix(rest, "at/")] = s
			}
		case strings.HasPrefix(key, k.ArbiterVMs()) && strings.HasSuffix(key, "/lease"):
			id := strings.TrimSuffix(strings.TrimPrefix(key, k.ArbiterVMs()), "/lease")
			h := holders[id]
			if err := json.Unmarshal(kv.Value, &h); err != nil {
				return nil, bad(err)
			}
			holders[id] = h
		}
	}
	for id, h := range holders {
		if v := p.VMs[id]; v != nil {
			v.Holder, v.Epoch = h.Holder, h.Epoch
		}
	}
	// A VM is the pool's once it has a spec; at/ keys left by a VM being
	// removed do not make one.
	for id, v := range p.VMs {
		if v.Spec.Port == 0 {
			delete(p.VMs, id)
		}
	}
	return p, nil
}

// AddVM adds a VM to the pool: the placement leader places it at once.
// A VM of that name already in the pool is an error; so is a port another
// VM of the pool listens on (two daemons on one host cannot share it).
func AddVM(ctx context.Context, cli *clientv3.Client, k Keys, id string, spec VMSpec) error {
	if err := CheckName("VM id", id); err != nil {
		return err
	}
	if spec.Port <= 0 || spec.Port > 65535 {
		return fmt.Errorf("VM %s: port %d is not a TCP port (1 to 65535)", id, spec.Port)
	}
	p, err := Read(ctx, cli, k)
	if err != nil {
		return err
	}
	for _, other := range p.VMIDs() {
		if p.VMs[other].Spec.Port == spec.Port && other != id {
			return fmt.Errorf("VM %s: port %d is VM %s's already; give each VM of the pool its own --port", id, spec.Port, other)
		}
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return err
	}
	key := k.Spec(id)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(b))).
		Commit()
	if err != nil {
		return fmt.Errorf("adding VM %s: %w", id, err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("VM %s is already in the pool (%s): remove it first, or choose another id", id, key)
	}
	return nil
}

// RemoveVM takes a VM out of the pool: its spec and placement are
// deleted, and the hosts stop its daemons (a primary stopped so records a
// clean stop with the arbiter). It reports whether the VM was there.
func RemoveVM(ctx context.Context, cli *clientv3.Client, k Keys, id string) (bool, error) {
	if err := CheckName("VM id", id); err != nil {
		return false, err
	}
	resp, err := cli.Delete(ctx, k.VMs()+id+"/", clientv3.WithPrefix())
	if err != nil {
		return false, fmt.Errorf("removing VM %s: %w", id, err)
	}
	return resp.Deleted > 0, nil
}
