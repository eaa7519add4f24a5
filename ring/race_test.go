//go:build race

package ring

// raceEnabled scales the stress tests down: the race detector slows every
// atomic operation by an order of magnitude.
const raceEnabled = true
