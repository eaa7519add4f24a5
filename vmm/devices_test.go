package vmm

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// abiConstants is what ftvm.h must agree with.
var abiConstants = map[string]int64{
	"FTVM_PORT_CONSOLE": int64(PortConsole), "FTVM_PORT_CLOCK": int64(PortClock),
	"FTVM_PORT_ENTROPY": int64(PortEntropy), "FTVM_PORT_NIC": int64(PortNIC),
	"FTVM_PORT_BLOCK": int64(PortBlock), "FTVM_PORT_HALT": int64(PortHalt),
	"FTVM_CONSOLE_WRITE": int64(OpConsoleWrite), "FTVM_CLOCK_NOW": int64(OpClockNow),
	"FTVM_ENTROPY_READ": int64(OpEntropyRead), "FTVM_NIC_TX": int64(OpNICTX),
	"FTVM_NIC_RX": int64(OpNICRX), "FTVM_NIC_WAIT": int64(OpNICWait), "FTVM_NIC_MAC": int64(OpNICMAC),
	"FTVM_BLOCK_READ": int64(OpBlockRead), "FTVM_BLOCK_WRITE": int64(OpBlockWrite),
	"FTVM_BLOCK_SIZE": int64(OpBlockSize), "FTVM_HALT_EXIT": int64(OpHaltExit),
	"FTVM_CONSOLE_MAX": ConsoleMaxBytes, "FTVM_ENTROPY_MAX": EntropyMaxBytes,
	"FTVM_NIC_MTU_FRAME": NICFrameMaxBytes, "FTVM_BLOCK_SECTOR": BlockSectorBytes,
	"FTVM_BLOCK_MAX": BlockMaxBytes, "FTVM_OK": int64(StatusOK),
	"FTVM_E_RANGE": int64(StatusRange), "FTVM_E_IO": int64(StatusIO),
	"FTVM_E_FAULT": int64(StatusFault), "FTVM_E_NODEV": int64(StatusNoDev), "FTVM_E_INVAL": int64(StatusInval),
	"FTVM_LOAD_BASE": int64(LoadBase), "FTVM_BOOT_MAGIC": int64(BootMagic),
}

var defineRE = regexp.MustCompile(`(?m)^#define\s+(FTVM_[A-Z0-9_]+)\s+\(?(-?(?:0x[0-9a-fA-F]+|\d+))(?:ULL|U)?\)?`)

// compareABI lists every disagreement between the header and the Go
// constants, and every constant the header lacks.
func compareABI(header string) []string {
	var problems []string
	seen := map[string]bool{}
	for _, m := range defineRE.FindAllStringSubmatch(header, -1) {
		want, ok := abiConstants[m[1]]
		if !ok {
			continue
		}
		seen[m[1]] = true
		got, err := strconv.ParseInt(m[2], 0, 64)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: cannot parse %q", m[1], m[2]))
			continue
		}
		if got != want {
			problems = append(problems, fmt.Sprintf("%s is %d in ftvm.h but %d in the VMM", m[1], got, want))
		}
	}
	for name := range abiConstants {
		if !seen[name] {
			problems = append(problems, name+" is missing from ftvm.h")
		}
	}
	return problems
}

func TestABIMatchesHeader(t *testing.T) {
	h, err := os.ReadFile("guests/include/ftvm.h")
	if err != nil {
		t.Fatalf("the device ABI header: %v", err)
	}
	for _, p := range compareABI(string(h)) {
		t.Error(p)
	}
	// The struct offsets the VMM uses: req is 40 bytes, boot 288.
	if requestStructBytes != 40 || bootStructBytes != 288 {
		t.Fatalf("struct sizes %d/%d", requestStructBytes, bootStructBytes)
	}
}

func TestCompareABICatchesAPlantedMismatch(t *testing.T) {
	h, err := os.ReadFile("guests/include/ftvm.h")
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(h), "#define FTVM_PORT_NIC     0x503", "#define FTVM_PORT_NIC     0x513", 1)
	bad = strings.Replace(bad, "#define FTVM_E_IO     (-5)", "", 1)
	p := compareABI(bad)
	if len(p) != 2 || !strings.Contains(strings.Join(p, "\n"), "FTVM_PORT_NIC is 1299") || !strings.Contains(strings.Join(p, "\n"), "FTVM_E_IO is missing") {
		t.Fatalf("planted mismatches reported as %q", p)
	}
}
