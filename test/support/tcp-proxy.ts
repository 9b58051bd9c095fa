import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy to cut a service off from RabbitMQ: `close()` drops every connection and refuses new
 * ones, `open()` listens again on the same port, `stall()` keeps connections open but forwards
 * nothing (a broker that never confirms).
 */
export async function startProxy(targetPort: number, port = 0) {
  const sockets = new Set<Socket>();
  let server: Server | null = null;
  let listenPort = port;
  let stalled = false;

  async function open(): Promise<void> {
    stalled = false;
    server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1');
      sockets.add(client);
      sockets.add(upstream);
      client.on('data', (data) => void (stalled || upstream.write(data)));
      upstream.on('data', (data) => void (stalled || client.write(data)));
      const end = () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
        sockets.delete(upstream);
      };
      client.on('close', end).on('error', end);
      upstream.on('close', end).on('error', end);
    });
    await new Promise<void>((resolve) => server?.listen(listenPort, '127.0.0.1', () => resolve()));
    const address = server.address();
    if (address && typeof address === 'object') listenPort = address.port;
  }

  await open();
  return {
    get port() {
      return listenPort;
    },
    open,
    stall(): void {
      stalled = true;
    },
    async close(): Promise<void> {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      const closing = server;
      server = null;
      if (closing) await new Promise<void>((resolve) => closing.close(() => resolve()));
    },
  };
}
