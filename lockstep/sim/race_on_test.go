//go:build race

package sim

// raceEnabled scales the CI seed count down: the race detector makes the
// simulator about ten times slower.
const raceEnabled = true
