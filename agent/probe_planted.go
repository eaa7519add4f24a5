//go:build ftvm_planted_delay

package agent

import (
	"os"
	"time"
)

// PlantedHoldDelayEnv names the environment variable that sets
// plantedHoldDelay in a daemon built with -tags ftvm_planted_delay (tests
// only: the tag is never given to a build that ships).
const PlantedHoldDelayEnv = "FTVM_PLANTED_HOLD_DELAY"

func init() {
	if v := os.Getenv(PlantedHoldDelayEnv); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			panic(PlantedHoldDelayEnv + ": " + err.Error())
		}
		plantedHoldDelay = d
	}
}
