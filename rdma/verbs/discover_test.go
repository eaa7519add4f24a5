package verbs

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/Mellanox/rdmamap"
)

// fakeSysfs lays out /sys/class/infiniband for one rxe device whose port 1
// has a RoCE v1 and a RoCE v2 GID for each of a link-local IPv6 address
// and 10.0.0.1, in the kernel's order, and an unpopulated entry (whose
// type file the kernel refuses to read: here, absent).
func fakeSysfs(t *testing.T) {
	t.Helper()
	root := t.TempDir()
	class := filepath.Join(root, "class")
	port := filepath.Join(root, "devices", "rxe0", "ports", "1")
	write := func(rel, s string) {
		p := filepath.Join(port, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("state", "4: ACTIVE")
	write("link_layer", "Ethernet")
	gids := []struct{ gid, typ string }{
		{"fe80:0000:0000:0000:0000:00ff:fe00:0001", "IB/RoCE v1"},
		{"fe80:0000:0000:0000:0000:00ff:fe00:0001", "RoCE v2"},
		{"0000:0000:0000:0000:0000:ffff:0a00:0001", "IB/RoCE v1"},
		{"0000:0000:0000:0000:0000:ffff:0a00:0001", "RoCE v2"},
	}
	for i, g := range gids {
		s := string(rune('0' + i))
		write("gids/"+s, g.gid)
		write("gid_attrs/types/"+s, g.typ)
		write("gid_attrs/ndevs/"+s, "dummy0")
	}
	write("gids/4", "0000:0000:0000:0000:0000:0000:0000:0000")
	// As in sysfs, the class directory holds a symlink to the device
	// (rdmamap lists only the symlinks).
	if err := os.MkdirAll(class, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(root, "devices", "rxe0"), filepath.Join(class, "rxe0")); err != nil {
		t.Fatal(err)
	}
	old := rdmamap.RdmaClassDir
	rdmamap.RdmaClassDir = class
	t.Cleanup(func() { rdmamap.RdmaClassDir = old })
}

func TestDevicesReadsSysfs(t *testing.T) {
	fakeSysfs(t)
	devs, err := Devices()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].Name != "rxe0" || len(devs[0].Ports) != 1 {
		t.Fatalf("Devices() = %+v, want rxe0 with one port", devs)
	}
	p := devs[0].Ports[0]
	if p.Num != 1 || p.State != "ACTIVE" || p.LinkLayer != "Ethernet" {
		t.Fatalf("port = %+v", p)
	}
	if len(p.GIDs) != 4 {
		t.Fatalf("GIDs = %+v, want the 4 populated ones", p.GIDs)
	}
	if g := p.GIDs[3]; g.Index != 3 || g.Type != "RoCE v2" || g.Netdev != "dummy0" || g.GID != netip.MustParseAddr("::ffff:10.0.0.1") {
		t.Fatalf("GID 3 = %+v", g)
	}
}

// The RoCE v2 GID is found by looking it up, wherever the table puts it.
func TestGIDLookup(t *testing.T) {
	fakeSysfs(t)
	g, err := gidFor("rxe0", 1, netip.MustParseAddr("10.0.0.1"))
	if err != nil || g.Index != 3 {
		t.Fatalf("gidFor(10.0.0.1) = %+v, %v; want index 3, the RoCE v2 one", g, err)
	}
	if g, err = gidFor("rxe0", 1, netip.Addr{}); err != nil || g.Index != 3 {
		t.Fatalf("gidFor(no address) = %+v, %v; want index 3, the first IPv4-mapped RoCE v2 GID", g, err)
	}
	if g, err = gidFor("rxe0", 1, netip.MustParseAddr("fe80::ff:fe00:1")); err != nil || g.Index != 1 {
		t.Fatalf("gidFor(fe80::ff:fe00:1) = %+v, %v; want index 1", g, err)
	}
	if _, err = gidFor("rxe0", 1, netip.MustParseAddr("10.0.0.2")); err == nil {
		t.Fatalf("gidFor(10.0.0.2) found a GID for an address the port does not have")
	}
	if _, err = gidFor("rxe9", 1, netip.Addr{}); err == nil {
		t.Fatalf("gidFor on a missing device succeeded")
	}
}
