package main

import "github.com/ftvm/ftvm/lockstep/wire"

// checkpointStateHeadroomBytes covers what a snapshot holds besides guest
// memory and disk: vCPU and device state, the snapshot's own framing.
const checkpointStateHeadroomBytes = 16 << 20

// checkpointBound is lockstep's MaxCheckpointBytes for this VM: what one
// pre-copy chain may carry to a secondary, which holds all of it until it
// restores. Each of its PrecopyRounds+1 parts may copy all of memory (a
// guest that dirties everything between rounds), the disk when the hosts
// keep their own copies (snapshots carry it then), the VMM's other state,
// and the node's section: the outputs held when it was taken, at most a
// log window of them. Both hosts compute the same bound from the same
// flags, which is why --mem, --disk-size and --precopy-rounds must agree.
func checkpointBound(c *daemonConfig) int {
	part := c.memBytes + checkpointStateHeadroomBytes
	if c.disk != "" && !c.sharedStorage {
		part += c.diskBytes
	}
	part += 12 + uint64(max(c.window, 1))*(14+wire.MaxOutputDataBytes)
	return int(min(part*uint64(c.precopyRounds+1), wire.MaxCheckpointBytes))
}
