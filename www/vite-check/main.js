// The package as a web developer uses it in a Vite app: imported by name, nothing else.
import { EventBusClient } from 'distributed-events';

const status = /** @type {HTMLElement} */ (document.getElementById('status'));
const events = /** @type {HTMLElement} */ (document.getElementById('events'));

// No reference is kept beyond this module's evaluation: a client runs until close(), and
// pack.test.mjs forces a garbage collection to check that it does.
const client = new EventBusClient({ serverUrl: location.origin, autoForward: true, initialPosition: 0 });

client.onStatus((next) => {
  status.dataset.state = next.state;
  status.textContent = next.state === 'backingOff' ? `backingOff: ${next.error.message}` : next.state;
  // For whoever reads the console (pack.test.mjs shows it when the page fails).
  console.info(`status: ${status.textContent}`);
});
client.onError((error) => console.error(`${error.code}: ${error.message}`));
client.on('*', (event) => {
  const entry = document.createElement('li');
  entry.dataset.id = event.id;
  entry.textContent = `${event.eventType} ${event.id}`;
  events.append(entry);
});
