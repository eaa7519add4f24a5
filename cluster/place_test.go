package cluster

import (
	"reflect"
	"testing"
)

func pool(hosts map[string]int, vms ...*VM) *Pool {
	p := &Pool{Hosts: map[string]HostInfo{}, VMs: map[string]*VM{}}
	for h, slots := range hosts {
		p.Hosts[h] = HostInfo{Addr: h, Slots: slots}
	}
	for _, v := range vms {
		if v.At == nil {
			v.At = map[string]DaemonState{}
		}
		v.Spec.Port = 7000
		p.VMs[v.ID] = v
	}
	return p
}

func placed(prim, sec string, gen uint64) *Placement {
	return &Placement{Primary: prim, Secondary: sec, Gen: gen}
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name string
		pool *Pool
		want map[string]Placement
	}{
		{"first placement spreads by free slots",
			pool(map[string]int{"a": 2, "b": 2, "d": 2, "e": 2}, &VM{ID: "v1"}, &VM{ID: "v2"}, &VM{ID: "v3"}),
			map[string]Placement{"v1": {"a", "b", 1}, "v2": {"d", "e", 1}, "v3": {"a", "b", 1}}},
		{"one host: placed unprotected",
			pool(map[string]int{"a": 2}, &VM{ID: "v1"}),
			map[string]Placement{"v1": {"a", "", 1}}},
		{"no host: not placed",
			pool(map[string]int{}, &VM{ID: "v1"}),
			map[string]Placement{}},
		{"full hosts are not picked",
			pool(map[string]int{"a": 1, "b": 0}, &VM{ID: "v1"}),
			map[string]Placement{"v1": {"a", "", 1}}},
		{"in place and served: nothing changes",
			pool(map[string]int{"a": 2, "b": 2}, &VM{ID: "v1", Place: placed("a", "b", 1), Holder: "a"}),
			map[string]Placement{}},
		{"secondary's host dead: a new secondary on a live host that does not hold the VM",
			pool(map[string]int{"a": 2, "d": 2, "e": 1}, &VM{ID: "v1", Place: placed("a", "b", 1), Holder: "a"},
				&VM{ID: "v2", Place: placed("e", "d", 1), Holder: "e"}),
			map[string]Placement{"v1": {"a", "d", 2}}},
		{"primary's host dead, lease not run out: wait",
			pool(map[string]int{"b": 2, "d": 2}, &VM{ID: "v1", Place: placed("a", "b", 3), Holder: "a"}),
			map[string]Placement{}},
		{"primary's host dead, no holder yet: wait",
			pool(map[string]int{"b": 2, "d": 2}, &VM{ID: "v1", Place: placed("a", "b", 3)}),
			map[string]Placement{}},
		{"the secondary took over: it is primary, a new secondary is placed",
			pool(map[string]int{"b": 2, "d": 2}, &VM{ID: "v1", Place: placed("a", "b", 3), Holder: "b"}),
			map[string]Placement{"v1": {"b", "d", 4}}},
		{"took over while the old primary's host key is still there: the old primary is not picked",
			pool(map[string]int{"a": 3, "b": 2, "d": 1}, &VM{ID: "v1", Place: placed("a", "b", 3), Holder: "b"}),
			map[string]Placement{"v1": {"b", "d", 4}}},
		{"a secondary only among the hosts the primary's daemon accepts",
			pool(map[string]int{"a": 2, "d": 2, "e": 2}, &VM{ID: "v1", Place: placed("a", "b", 1), Holder: "a",
				At: map[string]DaemonState{"a": {Role: "primary", AllowPeers: "b,e"}}}),
			map[string]Placement{"v1": {"a", "e", 2}}},
		{"no host the primary's daemon accepts: no secondary",
			pool(map[string]int{"a": 2, "d": 2}, &VM{ID: "v1", Place: placed("a", "b", 1), Holder: "a",
				At: map[string]DaemonState{"a": {Role: "primary", AllowPeers: "b"}}}),
			map[string]Placement{"v1": {"a", "", 2}}},
		{"took over, no host left for a secondary",
			pool(map[string]int{"b": 2}, &VM{ID: "v1", Place: placed("a", "b", 3), Holder: "b"}),
			map[string]Placement{"v1": {"b", "", 4}}},
		{"primary not serving yet: no secondary placed",
			pool(map[string]int{"a": 2, "b": 2}, &VM{ID: "v1", Place: placed("a", "", 1)}),
			map[string]Placement{}},
		{"both hosts dead: the dead secondary is dropped, the VM is not moved (its disks are on the dead hosts)",
			pool(map[string]int{"d": 2}, &VM{ID: "v1", Place: placed("a", "b", 1)}),
			map[string]Placement{"v1": {"a", "", 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Plan(tc.pool)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Plan = %+v, want %+v", got, tc.want)
			}
			for id, pl := range got {
				if pl.Primary == pl.Secondary {
					t.Errorf("%s: primary and secondary on one host: %+v", id, pl)
				}
			}
		})
	}
}
