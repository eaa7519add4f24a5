package tcpfallback

import (
	"crypto/tls"
	"errors"
	"net"
	"strings"
)

// Reasons RejectReason returns: a small fixed set, so that a caller can
// count or rate-limit refusals per reason with bounded state.
const (
	RejectPeerName = "peer not accepted"         // authenticated, but not one of Config.PeerNames
	RejectPeerBusy = "another peer is connected" // would have displaced the connected peer
	RejectVersion  = "protocol version"
	RejectVMID     = "VM id"
	RejectAuthMode = "authentication mode"
	RejectKey      = "pre-shared key"
	RejectNotFTVM  = "not an ftvm peer" // a hello or frame that is not ours
	RejectByPeer   = "refused by the peer"
	RejectTLS      = "TLS"
	RejectTimeout  = "set-up timed out"
	RejectEvicted  = "evicted" // maxPendingHandshakes newer set-ups waited
	RejectOther    = "set-up failed"
)

// refusalPrefixes map the reasons this package's refusals start with to
// their RejectReason.
var refusalPrefixes = []struct{ prefix, reason string }{
	{"peer not accepted", RejectPeerName},
	{"this host's", RejectPeerBusy},
	{"protocol version mismatch", RejectVersion},
	{"VM id mismatch", RejectVMID},
	{"authentication mode mismatch", RejectAuthMode},
	{"pre-shared key proof", RejectKey},
	{"the listener failed to prove", RejectKey},
	{"hello does not start", RejectNotFTVM},
	{"hello has a malformed", RejectNotFTVM},
}

// RejectReason classifies why a connection set-up failed (the Err of an
// EventPeerRejected or EventConnectFailed) into one of the Reject*
// constants.
func RejectReason(err error) string {
	var re *refusedError
	var ge *garbageError
	var ne net.Error
	var ae tls.AlertError
	var rh tls.RecordHeaderError
	var ce *tls.CertificateVerificationError
	switch {
	case err == nil:
		return RejectOther
	case strings.Contains(err.Error(), "evicted after"):
		return RejectEvicted
	case errors.As(err, &re):
		if re.byPeer {
			return RejectByPeer
		}
		for _, p := range refusalPrefixes {
			if strings.HasPrefix(re.reason, p.prefix) {
				return p.reason
			}
		}
		return RejectOther
	case errors.As(err, &ge):
		return RejectNotFTVM
	case errors.As(err, &ne) && ne.Timeout():
		return RejectTimeout
	case errors.As(err, &ae), errors.As(err, &rh), errors.As(err, &ce), strings.Contains(err.Error(), "TLS set-up"):
		return RejectTLS
	}
	return RejectOther
}
