package cluster

import (
	"sort"
	"strings"
)

// Plan says which placements should change, given one read of the pool:
// the new Placement of each VM that needs one, by VM. It is a pure
// function of the read (the placement leader writes what it returns, each
// under a compare of the read's revision of that placement).
//
// The rules, VM by VM in name order:
//
//   - Not placed yet: the primary goes to the live host with the most free
//     slots, the secondary to the next (ties: the lower name). With one
//     live host the VM is placed unprotected; with none, not at all.
//   - The arbiter's lease names another host than the placed primary:
//     that host acts as primary now (the secondary took over), so it
//     becomes the primary, and the secondary slot is emptied (unless the
//     old primary had been the holder's secondary, which cannot be).
//   - The placed secondary is not live (its host's key is gone): it is
//     emptied.
//   - No secondary, and the primary is live and holds the arbiter's lease
//     (it serves): a secondary is picked among the live hosts that are not
//     the primary (nor the primary that lost the VM to a take-over: its
//     host key may outlive its arbiter lease by a moment) and have a free
//     slot, most free first, and among the hosts the primary's daemon
//     accepts (its --allow-peers, published by its host). Waiting for the
//     lease keeps a replacement from dialing a host that has not taken
//     over yet, and from being placed beside a VM nobody serves.
//   - A primary that is not live while its secondary is: nothing changes
//     until the secondary holds the lease (the arbiter grants it only once
//     the dead primary's lease ran out). When neither host is live the
//     VM is lost to the pool (its disks are on dead hosts) and is left for
//     an operator; Status reports it.
//
// A host's free slots are its Slots less the placements that name it,
// counting the changes this Plan has made so far.
func Plan(p *Pool) map[string]Placement {
	used := map[string]int{}
	for _, v := range p.VMs {
		if v.Place != nil {
			used[v.Place.Primary]++
			if v.Place.Secondary != "" {
				used[v.Place.Secondary]++
			}
		}
	}
	free := func(h string) int { return p.Hosts[h].Slots - used[h] }
	// pick is the live host with the most free slots that is not in
	// except, or "".
	pick := func(except ...string) string {
		best := ""
		for _, h := range p.HostNames() {
			if free(h) <= 0 || contains(except, h) {
				continue
			}
			if best == "" || free(h) > free(best) {
				best = h
			}
		}
		return best
	}
	live := func(h string) bool { _, ok := p.Hosts[h]; return h != "" && ok }
	// refused are the live hosts v's primary daemon would refuse as its
	// secondary (not in its --allow-peers, which is fixed when it starts).
	refused := func(v *VM, primary string) []string {
		st, ok := v.At[primary]
		if !ok || st.AllowPeers == "" {
			return nil
		}
		allowed := strings.Split(st.AllowPeers, ",")
		var out []string
		for h := range p.Hosts {
			if !contains(allowed, h) {
				out = append(out, h)
			}
		}
		return out
	}

	changes := map[string]Placement{}
	for _, id := range p.VMIDs() {
		v := p.VMs[id]
		var next Placement
		if v.Place == nil {
			next.Primary = pick()
			if next.Primary == "" {
				continue
			}
			used[next.Primary]++
			if next.Secondary = pick(next.Primary); next.Secondary != "" {
				used[next.Secondary]++
			}
			next.Gen = 1
			changes[id] = next
			continue
		}
		cur := *v.Place
		next = cur
		if v.Holder != "" && v.Holder != next.Primary {
			used[next.Primary]--
			if next.Secondary == v.Holder {
				next.Secondary = ""
			} else if next.Secondary != "" {
				used[next.Secondary]--
				next.Secondary = ""
			}
			next.Primary = v.Holder
			used[next.Primary]++
		}
		if next.Secondary != "" && !live(next.Secondary) {
			used[next.Secondary]--
			next.Secondary = ""
		}
		if next.Secondary == "" && live(next.Primary) && v.Holder == next.Primary {
			// Not the primary that lost the VM either: its host key may
			// outlive its arbiter lease by a little (two leases, two
			// clocks), but the host is dead or cut off.
			if next.Secondary = pick(append(refused(v, next.Primary), next.Primary, cur.Primary)...); next.Secondary != "" {
				used[next.Secondary]++
			}
		}
		if next.Primary != cur.Primary || next.Secondary != cur.Secondary {
			next.Gen = cur.Gen + 1
			changes[id] = next
		}
	}
	return changes
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
