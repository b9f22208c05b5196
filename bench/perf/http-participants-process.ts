/**
 * Two HTTP participants that answer every protocol call at once (a vote of yes
 * for prepare and can-commit, 200 for the rest), in a process of their own.
 * Prints `{"ports":[a,b]}` on stdout once both listen. For the bench only.
 */
import http from 'node:http';

const YES = Buffer.from('{"vote":"yes"}');
const OK = Buffer.from('{}');

function serve(): Promise<number> {
  const server = http.createServer({ keepAliveTimeout: 30_000 }, (req, res) => {
    req.resume();
    req.on('end', () => {
      const vote = req.url === '/prepare' || req.url === '/can-commit';
      const body = vote ? YES : OK;
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': body.length });
      res.end(body);
    });
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      resolve(typeof address === 'object' && address !== null ? address.port : 0);
    });
  });
}

const ports = await Promise.all([serve(), serve()]);
process.stdout.write(`${JSON.stringify({ ports })}\n`);
process.on('SIGTERM', () => process.exit(0));
