package verbs

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/Mellanox/rdmamap"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Discovery reads sysfs (through rdmamap where it has a function for it)
// and the kernel's routing table. It needs no cgo, so `ftvm rdma devices`
// and Available work in every build, and say what a build without RDMA
// support is missing.

// Device is one RDMA device as sysfs shows it.
type Device struct {
	Name  string
	Ports []Port
}

// Port is one port of a Device.
type Port struct {
	Num       int
	State     string // "ACTIVE", "DOWN", ...
	LinkLayer string // "Ethernet" (RoCE) or "InfiniBand"
	GIDs      []GID  // the populated entries of the GID table
}

// GID is one populated GID table entry.
type GID struct {
	Index  int
	GID    netip.Addr // a GID has the form of an IPv6 address; RoCE v2 over IPv4 uses the IPv4-mapped one
	Type   string     // "RoCE v2", "IB/RoCE v1"
	Netdev string     // the network device the entry belongs to ("" on InfiniBand)
}

// roceV2 is how sysfs's gid_attrs/types names a RoCE v2 GID.
const roceV2 = "RoCE v2"

// Devices lists the RDMA devices, their ports and their GID tables. No
// device is an empty list, not an error.
func Devices() ([]Device, error) {
	names := rdmamap.GetRdmaDeviceList()
	sort.Strings(names)
	devs := make([]Device, 0, len(names))
	for _, name := range names {
		d := Device{Name: name}
		for _, ps := range rdmamap.GetPorts(name) {
			num, err := strconv.Atoi(ps)
			if err != nil {
				continue
			}
			p, err := readPort(name, num)
			if err != nil {
				return nil, err
			}
			d.Ports = append(d.Ports, p)
		}
		sort.Slice(d.Ports, func(i, j int) bool { return d.Ports[i].Num < d.Ports[j].Num })
		devs = append(devs, d)
	}
	return devs, nil
}

func portDir(dev string, port int) string {
	return filepath.Join(rdmamap.RdmaClassDir, dev, rdmamap.RdmaPortsdir, strconv.Itoa(port))
}

func readTrim(path string) (string, error) {
	b, err := os.ReadFile(path)
	return strings.TrimSpace(string(b)), err
}

// readPort reads one port's state, link layer and populated GIDs. An entry
// whose type cannot be read is unpopulated (the kernel answers EINVAL).
func readPort(dev string, num int) (Port, error) {
	dir := portDir(dev, num)
	p := Port{Num: num}
	state, err := readTrim(filepath.Join(dir, "state"))
	if err != nil {
		return p, fmt.Errorf("verbs: reading %s port %d: %w", dev, num, err)
	}
	// "4: ACTIVE"
	if _, s, ok := strings.Cut(state, ": "); ok {
		state = s
	}
	p.State = state
	p.LinkLayer, _ = readTrim(filepath.Join(dir, "link_layer"))
	ents, err := os.ReadDir(filepath.Join(dir, "gids"))
	if err != nil {
		return p, fmt.Errorf("verbs: reading %s port %d GID table: %w", dev, num, err)
	}
	for _, ent := range ents {
		idx, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		g, ok := readGID(dir, idx)
		if ok {
			p.GIDs = append(p.GIDs, g)
		}
	}
	sort.Slice(p.GIDs, func(i, j int) bool { return p.GIDs[i].Index < p.GIDs[j].Index })
	return p, nil
}

func readGID(portDir string, idx int) (GID, bool) {
	g := GID{Index: idx}
	s := strconv.Itoa(idx)
	typ, err := readTrim(filepath.Join(portDir, rdmamap.RdmaGidAttrDir, "types", s))
	if err != nil || typ == "" {
		return g, false
	}
	g.Type = typ
	text, err := readTrim(filepath.Join(portDir, "gids", s))
	if err != nil {
		return g, false
	}
	a, err := netip.ParseAddr(text)
	if err != nil || !a.Is6() || a.IsUnspecified() {
		return g, false
	}
	g.GID = a
	g.Netdev, _ = readTrim(filepath.Join(portDir, rdmamap.RdmaGidAttrDir, rdmamap.RdmaGidAttrNdevDir, s))
	return g, true
}

// gidFor returns the RoCE v2 GID of dev's port for the local address addr
// (IPv4-mapped for an IPv4 address), looked up in the GID table; never a
// fixed index. An invalid addr takes the port's first RoCE v2 GID that is
// IPv4-mapped, else its first RoCE v2 GID.
func gidFor(dev string, port int, addr netip.Addr) (GID, error) {
	p, err := readPort(dev, port)
	if err != nil {
		return GID{}, err
	}
	want := netip.Addr{}
	if addr.IsValid() {
		want = netip.AddrFrom16(addr.As16())
		if addr.Is6() && !addr.Is4In6() {
			want = addr
		}
	}
	var first, firstMapped *GID
	for i := range p.GIDs {
		g := &p.GIDs[i]
		if g.Type != roceV2 {
			continue
		}
		if want.IsValid() && g.GID == want {
			return *g, nil
		}
		if first == nil {
			first = g
		}
		if firstMapped == nil && g.GID.Is4In6() {
			firstMapped = g
		}
	}
	switch {
	case want.IsValid():
		return GID{}, fmt.Errorf("verbs: %s port %d has no RoCE v2 GID for %v (its GIDs: %s); is the address on the device's netdev?", dev, port, addr, describeGIDs(p.GIDs))
	case firstMapped != nil:
		return *firstMapped, nil
	case first != nil:
		return *first, nil
	}
	return GID{}, fmt.Errorf("verbs: %s port %d has no RoCE v2 GID (its GIDs: %s); give its netdev an IP address", dev, port, describeGIDs(p.GIDs))
}

func describeGIDs(gs []GID) string {
	if len(gs) == 0 {
		return "none"
	}
	parts := make([]string, len(gs))
	for i, g := range gs {
		parts[i] = fmt.Sprintf("%d %v %s %s", g.Index, g.GID, g.Type, g.Netdev)
	}
	return strings.Join(parts, "; ")
}

// Route returns the network device the kernel routes peer through and the
// local address it would send from. A peer address that is one of this
// host's own is routed through lo; then the device that holds the address
// is the one returned, since RDMA has no device on lo.
func Route(peer netip.Addr) (netdev string, src netip.Addr, err error) {
	peer = peer.Unmap()
	if !peer.IsValid() {
		return "", src, errors.New("verbs: no peer address")
	}
	routes, err := netlink.RouteGet(net.IP(peer.AsSlice()))
	if err != nil {
		return "", src, fmt.Errorf("verbs: no route to %v: %w", peer, err)
	}
	if len(routes) == 0 {
		return "", src, fmt.Errorf("verbs: no route to %v", peer)
	}
	r := routes[0]
	if r.Type == unix.RTN_LOCAL {
		return ownerOf(peer)
	}
	link, err := netlink.LinkByIndex(r.LinkIndex)
	if err != nil {
		return "", src, fmt.Errorf("verbs: route to %v uses interface %d: %w", peer, r.LinkIndex, err)
	}
	if a, ok := netip.AddrFromSlice(r.Src); ok {
		src = a.Unmap()
	}
	return link.Attrs().Name, src, nil
}

// ownerOf finds the interface that holds the local address a.
func ownerOf(a netip.Addr) (string, netip.Addr, error) {
	ifs, err := net.Interfaces()
	if err != nil {
		return "", netip.Addr{}, fmt.Errorf("verbs: listing interfaces: %w", err)
	}
	for _, ifc := range ifs {
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, ad := range addrs {
			ipn, ok := ad.(*net.IPNet)
			if !ok {
				continue
			}
			if b, ok := netip.AddrFromSlice(ipn.IP); ok && b.Unmap() == a {
				return ifc.Name, a, nil
			}
		}
	}
	return "", netip.Addr{}, fmt.Errorf("verbs: %v is routed locally but no interface holds it", a)
}

// Find picks the device, port and local address to reach peer with: the
// RDMA device of the netdev the kernel routes peer through (rdmamap), the
// port whose GID table has that netdev, and the route's source address,
// whose RoCE v2 GID New looks up.
func Find(peer netip.Addr) (Config, error) {
	netdev, src, err := Route(peer)
	if err != nil {
		return Config{}, err
	}
	if netdev == "lo" {
		return Config{}, fmt.Errorf("verbs: %v is reached through lo, which has no RDMA device: use an address on a RoCE netdev", peer)
	}
	dev, err := rdmamap.GetRdmaDeviceForNetdevice(netdev)
	if err != nil || dev == "" {
		if err == nil {
			err = errors.New("none found")
		}
		return Config{}, fmt.Errorf("verbs: %v is routed through %s, which has no RDMA device (%v): add one (e.g. `rdma link add rxe0 type rxe netdev %s`) or use --transport tcp", peer, netdev, err, netdev)
	}
	for _, ps := range rdmamap.GetPorts(dev) {
		num, err := strconv.Atoi(ps)
		if err != nil {
			continue
		}
		p, err := readPort(dev, num)
		if err != nil {
			continue
		}
		for _, g := range p.GIDs {
			if g.Netdev == netdev && g.Type == roceV2 {
				return Config{Device: dev, Port: num, Addr: src, Netdev: netdev}, nil
			}
		}
	}
	return Config{}, fmt.Errorf("verbs: RDMA device %s serves %s but no port has a RoCE v2 GID on it", dev, netdev)
}

// Available says whether this build can reach peer over verbs, for
// `--transport auto`: the device it would use, or why not.
func Available(peer netip.Addr) (dev string, why string, ok bool) {
	if !Supported {
		return "", ErrNotBuilt.Error(), false
	}
	cfg, err := Find(peer)
	if err != nil {
		return "", err.Error(), false
	}
	p, err := readPort(cfg.Device, cfg.Port)
	if err != nil {
		return cfg.Device, err.Error(), false
	}
	if p.State != "ACTIVE" {
		return cfg.Device, fmt.Sprintf("verbs: %s port %d is %s, not ACTIVE", cfg.Device, cfg.Port, p.State), false
	}
	if _, err := gidFor(cfg.Device, cfg.Port, cfg.Addr); err != nil {
		return cfg.Device, err.Error(), false
	}
	return cfg.Device, fmt.Sprintf("%v is routed through %s, served by %s port %d", peer, cfg.Netdev, cfg.Device, cfg.Port), true
}

// FindAny picks this host's first RDMA device with an active Ethernet port
// and an IPv4 RoCE v2 GID, for a side that does not yet know its peer (a
// primary waiting for a secondary to join).
func FindAny() (Config, error) {
	devs, err := Devices()
	if err != nil {
		return Config{}, err
	}
	for _, d := range devs {
		for _, p := range d.Ports {
			if p.State != "ACTIVE" || p.LinkLayer != "Ethernet" {
				continue
			}
			for _, g := range p.GIDs {
				if g.Type == roceV2 && g.GID.Is4In6() && g.Netdev != "" {
					return Config{Device: d.Name, Port: p.Num, Addr: g.GID.Unmap(), Netdev: g.Netdev}, nil
				}
			}
		}
	}
	if len(devs) == 0 {
		return Config{}, errors.New("verbs: no RDMA device on this host")
	}
	return Config{}, fmt.Errorf("verbs: no RDMA device here has an active Ethernet port with an IPv4 RoCE v2 GID (see `ftvm rdma devices`)")
}
