// ssh2_peer: an SSH client and server made with Node's ssh2 package (npm), for the capture lab
// (captures/lab_ssh.py runs it with NODE_PATH pointing at an ssh2 installed outside the repository).
//
//   node ssh2_peer.js server PORT HOSTKEY AUTHORIZED_PUB
//       public-key login; answers tcpip-forward (RFC 4254 7.1) by listening on the outside host's loopback and
//       opening a forwarded-tcpip channel per connection; "exec" requests run through /bin/sh.
//   node ssh2_peer.js reverse HOST PORT KEY REMOTE_PORT LOCAL_PORT DURATION_S [KEEPALIVE_S] [CIPHER]
//       like ssh -N -R REMOTE_PORT:127.0.0.1:LOCAL_PORT, for DURATION_S seconds
//   node ssh2_peer.js exec HOST PORT KEY COMMAND [CIPHER]
'use strict';
const fs = require('fs');
const net = require('net');
const { spawn } = require('child_process');
const { Client, Server, utils } = require('ssh2');

function die(msg) {
  process.stderr.write(`ssh2_peer: ${msg}\n`);
  process.exit(1);
}

function connect(host, port, key, extra) {
  const conn = new Client();
  const cfg = {
    host, port: Number(port), username: 'root', privateKey: fs.readFileSync(key),
    hostVerifier: () => true, // the lab's own throwaway host key
    readyTimeout: 10000,
    ...extra,
  };
  conn.on('error', (err) => die(`${host}:${port}: ${err.message}`));
  conn.connect(cfg);
  return conn;
}

function cipherOption(cipher) {
  return cipher ? { algorithms: { cipher: [cipher] } } : {};
}

function reverse([host, port, key, remotePort, localPort, duration, keepalive, cipher]) {
  const extra = cipherOption(cipher);
  if (Number(keepalive) > 0) extra.keepaliveInterval = Number(keepalive) * 1000;
  const conn = connect(host, port, key, extra);
  conn.on('ready', () => {
    conn.forwardIn('127.0.0.1', Number(remotePort), (err) => {
      if (err) die(`tcpip-forward: ${err.message}`);
    });
    setTimeout(() => { conn.end(); process.exit(0); }, Number(duration) * 1000);
  });
  conn.on('tcp connection', (info, accept) => {
    const stream = accept();
    const sock = net.connect(Number(localPort), '127.0.0.1');
    sock.on('error', () => stream.close());
    stream.on('error', () => sock.destroy());
    stream.pipe(sock).pipe(stream);
  });
}

function execCommand([host, port, key, command, cipher]) {
  const conn = connect(host, port, key, cipherOption(cipher));
  conn.on('ready', () => {
    conn.exec(command, (err, stream) => {
      if (err) die(`exec: ${err.message}`);
      stream.on('data', (d) => process.stdout.write(d));
      stream.stderr.on('data', (d) => process.stderr.write(d));
      stream.on('close', () => conn.end());
    });
  });
}

function server([port, hostKey, authorized]) {
  const allowed = utils.parseKey(fs.readFileSync(authorized));
  const allowedBlob = allowed.getPublicSSH();
  new Server({ hostKeys: [fs.readFileSync(hostKey)] }, (client) => {
    client.on('error', () => {});
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || ctx.key.algo !== allowed.type || !ctx.key.data.equals(allowedBlob)) {
        return ctx.reject(['publickey']);
      }
      if (ctx.signature && allowed.verify(ctx.blob, ctx.signature, ctx.hashAlgo) !== true) {
        return ctx.reject(['publickey']);
      }
      ctx.accept();
    });
    client.on('ready', () => {
      const listeners = [];
      client.on('request', (accept, reject, name, info) => {
        if (name !== 'tcpip-forward') { if (reject) reject(); return; } // keepalives: failure, as sshd answers
        // listen on the outside host's loopback, as sshd does without GatewayPorts
        const srv = net.createServer((sock) => {
          client.forwardOut(info.bindAddr, info.bindPort, sock.remoteAddress, sock.remotePort, (err, ch) => {
            if (err) { sock.destroy(); return; }
            sock.on('error', () => ch.close());
            sock.pipe(ch).pipe(sock);
          });
        });
        srv.on('error', () => reject && reject());
        srv.listen(info.bindPort, '127.0.0.1', () => { listeners.push(srv); accept && accept(); });
      });
      client.on('session', (acceptSession) => {
        const session = acceptSession();
        session.on('exec', (acceptExec, rejectExec, info) => {
          const stream = acceptExec();
          const child = spawn('/bin/sh', ['-c', info.command]);
          child.stdout.pipe(stream, { end: false });
          child.stderr.pipe(stream.stderr, { end: false });
          child.on('close', (code) => { stream.exit(code || 0); stream.end(); });
        });
        session.on('pty', (acceptPty, rejectPty) => rejectPty && rejectPty());
        session.on('shell', (acceptShell, rejectShell) => rejectShell && rejectShell());
      });
      client.on('close', () => listeners.forEach((s) => s.close()));
    });
  }).listen(Number(port), '0.0.0.0');
}

const [mode, ...args] = process.argv.slice(2);
if (mode === 'server') server(args);
else if (mode === 'reverse') reverse(args);
else if (mode === 'exec') execCommand(args);
else die('usage: ssh2_peer.js server|reverse|exec ...');
