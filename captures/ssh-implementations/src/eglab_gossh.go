// eglab_gossh: an SSH client and server made with Go's golang.org/x/crypto/ssh, for the capture lab
// (captures/lab_ssh.py builds it at record time from Debian's golang-golang-x-crypto-dev, GOPATH mode).
//
//	eglab_gossh server -listen 0.0.0.0:2200 -hostkey KEY -authorized KEY.pub
//	    public-key login; answers tcpip-forward (RFC 4254 7.1) by listening on the outside host and opening a
//	    forwarded-tcpip channel per connection; direct-tcpip channels; "exec" requests run through /bin/sh.
//	eglab_gossh client -addr HOST:PORT -key KEY [-cipher NAME] MODE ...
//	    reverse -remote 127.0.0.1:9000 -local 127.0.0.1:8000 [-keepalive S] -duration S   (like ssh -N -R)
//	    local -listen 127.0.0.1:8081 -target 127.0.0.1:8080 -duration S                   (like ssh -N -L)
//	    exec -cmd "uname -a"                                                               (like ssh host cmd)
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "eglab_gossh: "+format+"\n", args...)
	os.Exit(1)
}

// pipe copies both ways until either side ends, then closes both.
func pipe(a, b io.ReadWriteCloser) {
	var once sync.Once
	done := func() { a.Close(); b.Close() }
	go func() { io.Copy(a, b); once.Do(done) }()
	io.Copy(b, a)
	once.Do(done)
}

func signer(path string) ssh.Signer {
	pem, err := os.ReadFile(path)
	if err != nil {
		fail("%v", err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		fail("%s: %v", path, err)
	}
	return s
}

// ------------------------------------------------------------------------------------------------ server

// RFC 4254 7.1 and 7.2 payloads
type forwardRequest struct {
	Addr string
	Port uint32
}

type forwardedOpen struct {
	Addr     string
	Port     uint32
	OrigAddr string
	OrigPort uint32
}

type directOpen struct {
	Host     string
	Port     uint32
	OrigAddr string
	OrigPort uint32
}

func server(args []string) {
	fs := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fs.String("listen", "0.0.0.0:2200", "address to listen on")
	hostKey := fs.String("hostkey", "", "host private key (OpenSSH format)")
	authorized := fs.String("authorized", "", "the one authorized public key")
	fs.Parse(args)
	raw, err := os.ReadFile(*authorized)
	if err != nil {
		fail("%v", err)
	}
	allowed, _, _, _, err := ssh.ParseAuthorizedKey(raw)
	if err != nil {
		fail("%s: %v", *authorized, err)
	}
	config := &ssh.ServerConfig{
		PublicKeyCallback: func(c ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(k.Marshal(), allowed.Marshal()) {
				return nil, nil
			}
			return nil, fmt.Errorf("unknown key for %q", c.User())
		},
	}
	config.AddHostKey(signer(*hostKey))
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fail("%v", err)
	}
	for {
		nc, err := ln.Accept()
		if err != nil {
			fail("%v", err)
		}
		go serveConn(nc, config)
	}
}

func serveConn(nc net.Conn, config *ssh.ServerConfig) {
	conn, chans, reqs, err := ssh.NewServerConn(nc, config)
	if err != nil {
		nc.Close()
		return
	}
	defer conn.Close()
	listeners := map[string]net.Listener{}
	var mu sync.Mutex
	go func() {
		for req := range reqs {
			switch req.Type {
			case "tcpip-forward":
				var fr forwardRequest
				if ssh.Unmarshal(req.Payload, &fr) != nil {
					req.Reply(false, nil)
					continue
				}
				// listen on the outside host's loopback, as sshd does without GatewayPorts
				ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(fr.Port))))
				if err != nil {
					req.Reply(false, nil)
					continue
				}
				mu.Lock()
				listeners[fmt.Sprint(fr.Port)] = ln
				mu.Unlock()
				port := uint32(ln.Addr().(*net.TCPAddr).Port)
				if fr.Port == 0 {
					req.Reply(true, ssh.Marshal(struct{ Port uint32 }{port}))
				} else {
					req.Reply(true, nil)
				}
				go acceptForwarded(conn, ln, fr.Addr, port)
			case "cancel-tcpip-forward":
				var fr forwardRequest
				ssh.Unmarshal(req.Payload, &fr)
				mu.Lock()
				if ln, ok := listeners[fmt.Sprint(fr.Port)]; ok {
					ln.Close()
				}
				mu.Unlock()
				req.Reply(true, nil)
			default: // keepalive@openssh.com and the like: failure, as sshd answers
				if req.WantReply {
					req.Reply(false, nil)
				}
			}
		}
	}()
	for nch := range chans {
		switch nch.ChannelType() {
		case "session":
			go serveSession(nch)
		case "direct-tcpip":
			var d directOpen
			if ssh.Unmarshal(nch.ExtraData(), &d) != nil {
				nch.Reject(ssh.ConnectionFailed, "bad payload")
				continue
			}
			go func(nch ssh.NewChannel, d directOpen) {
				target, err := net.Dial("tcp", net.JoinHostPort(d.Host, strconv.Itoa(int(d.Port))))
				if err != nil {
					nch.Reject(ssh.ConnectionFailed, err.Error())
					return
				}
				ch, reqs, err := nch.Accept()
				if err != nil {
					target.Close()
					return
				}
				go ssh.DiscardRequests(reqs)
				pipe(ch, target)
			}(nch, d)
		default:
			nch.Reject(ssh.UnknownChannelType, "unsupported channel type")
		}
	}
	mu.Lock()
	for _, ln := range listeners {
		ln.Close()
	}
	mu.Unlock()
}

func acceptForwarded(conn *ssh.ServerConn, ln net.Listener, bindAddr string, port uint32) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		orig := c.RemoteAddr().(*net.TCPAddr)
		payload := ssh.Marshal(forwardedOpen{bindAddr, port, orig.IP.String(), uint32(orig.Port)})
		ch, reqs, err := conn.OpenChannel("forwarded-tcpip", payload)
		if err != nil {
			c.Close()
			continue
		}
		go ssh.DiscardRequests(reqs)
		go pipe(ch, c)
	}
}

func serveSession(nch ssh.NewChannel) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	for req := range reqs {
		if req.Type != "exec" {
			if req.WantReply {
				req.Reply(false, nil) // no pty or shell here: exec only
			}
			continue
		}
		var cmd struct{ Command string }
		if ssh.Unmarshal(req.Payload, &cmd) != nil {
			req.Reply(false, nil)
			return
		}
		req.Reply(true, nil)
		p := exec.Command("/bin/sh", "-c", cmd.Command)
		p.Stdout, p.Stderr = ch, ch.Stderr()
		status := uint32(0)
		if err := p.Run(); err != nil {
			status = 1
			if ee, ok := err.(*exec.ExitError); ok {
				status = uint32(ee.ExitCode())
			}
		}
		ch.CloseWrite()
		ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
		return
	}
}

// ------------------------------------------------------------------------------------------------ client

func client(args []string) {
	fs := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fs.String("addr", "", "server host:port")
	key := fs.String("key", "", "client private key (OpenSSH format)")
	user := fs.String("user", "root", "user name")
	cipher := fs.String("cipher", "", "cipher to offer alone (default: the library's list)")
	mac := fs.String("mac", "", "MAC to offer alone (default: the library's list)")
	remote := fs.String("remote", "127.0.0.1:9000", "reverse: address the server listens on")
	local := fs.String("local", "127.0.0.1:8000", "reverse: where connections from the server go")
	listen := fs.String("listen", "127.0.0.1:8081", "local: address to listen on here")
	target := fs.String("target", "127.0.0.1:8080", "local: address the server connects to")
	keepalive := fs.Float64("keepalive", 0, "seconds between keepalive@openssh.com requests (0: none)")
	duration := fs.Float64("duration", 10, "seconds to keep a tunnel up")
	command := fs.String("cmd", "uname -a", "exec: the command")
	fs.Parse(args)
	if fs.NArg() != 1 {
		fail("client: one mode (reverse, local, exec) expected")
	}
	config := &ssh.ClientConfig{
		User:            *user,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer(*key))},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), // the lab's own throwaway host key
		Timeout:         10 * time.Second,
	}
	if *cipher != "" {
		config.Ciphers = []string{*cipher}
	}
	if *mac != "" {
		config.MACs = []string{*mac}
	}
	conn, err := ssh.Dial("tcp", *addr, config)
	if err != nil {
		fail("dial %s: %v", *addr, err)
	}
	defer conn.Close()
	if *keepalive > 0 {
		go func() {
			for range time.Tick(time.Duration(*keepalive * float64(time.Second))) {
				conn.SendRequest("keepalive@openssh.com", true, nil)
			}
		}()
	}
	until := time.After(time.Duration(*duration * float64(time.Second)))
	switch fs.Arg(0) {
	case "reverse":
		ln, err := conn.Listen("tcp", *remote)
		if err != nil {
			fail("tcpip-forward %s: %v", *remote, err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func(c net.Conn) {
					l, err := net.Dial("tcp", *local)
					if err != nil {
						c.Close()
						return
					}
					pipe(c, l)
				}(c)
			}
		}()
		<-until
	case "local":
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fail("%v", err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func(c net.Conn) {
					r, err := conn.Dial("tcp", *target)
					if err != nil {
						c.Close()
						return
					}
					pipe(c, r)
				}(c)
			}
		}()
		<-until
	case "exec":
		s, err := conn.NewSession()
		if err != nil {
			fail("%v", err)
		}
		out, err := s.CombinedOutput(*command)
		os.Stdout.Write(out)
		if err != nil {
			fail("exec: %v", err)
		}
	default:
		fail("unknown mode %q", fs.Arg(0))
	}
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: eglab_gossh server|client ...")
	}
	switch os.Args[1] {
	case "server":
		server(os.Args[2:])
	case "client":
		client(os.Args[2:])
	default:
		fail("unknown command %q", os.Args[1])
	}
}
