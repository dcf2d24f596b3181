// Force-directed layout on typed arrays: Barnes-Hut many-body repulsion, springs along
// edges and a weak pull to the centre, integrated with velocity decay and a cooling
// "alpha", the model d3-force uses. Written for 10,000+ nodes in a worker: no objects
// per node, one quadtree rebuilt per tick in preallocated arrays.

export class ForceLayout {
  /**
   * @param {number} n nodes
   * @param {Uint32Array} edges pairs of node indices
   * @param {object} [options]
   */
  constructor(n, edges, options = {}) {
    this.n = n;
    this.edges = edges;
    this.x = new Float64Array(n);
    this.y = new Float64Array(n);
    this.vx = new Float64Array(n);
    this.vy = new Float64Array(n);
    this.fixed = new Uint8Array(n);
    this.theta2 = (options.theta ?? 0.9) ** 2;
    this.charge = options.charge ?? -30;
    this.linkDistance = options.linkDistance ?? 30;
    this.gravity = options.gravity ?? 0.02;
    this.velocityDecay = options.velocityDecay ?? 0.4;
    this.alpha = 1;
    this.alphaMin = options.alphaMin ?? 0.004;
    this.alphaDecay = 1 - this.alphaMin ** (1 / (options.iterations ?? 300));
    this.alphaTarget = 0;
    this.ticks = 0;
    this.setEdges(edges);
    this.allocTree();
  }

  setEdges(edges) {
    const n = this.n;
    this.edges = edges;
    const degree = new Uint32Array(n);
    for (let k = 0; k < edges.length; k++) degree[edges[k]] += 1;
    this.degree = degree;
    const m = edges.length >> 1;
    // d3-force's defaults: strength 1 / min(degree), bias towards the lighter end.
    this.linkStrength = new Float32Array(m);
    this.linkBias = new Float32Array(m);
    for (let e = 0; e < m; e++) {
      const a = edges[2 * e];
      const b = edges[2 * e + 1];
      this.linkStrength[e] = 1 / Math.max(1, Math.min(degree[a], degree[b]));
      this.linkBias[e] = degree[a] / Math.max(1, degree[a] + degree[b]);
    }
  }

  allocTree() {
    const cap = Math.max(64, this.n * 4);
    this.cap = cap;
    this.child = new Int32Array(cap * 4); // -1 empty, >=0 cell index, <= -2 body (-2 - i)
    this.mass = new Float64Array(cap);
    this.cx = new Float64Array(cap); // weighted sums, then centres of mass
    this.cy = new Float64Array(cap);
    this.size = new Float64Array(cap);
    this.stack = new Int32Array(cap);
  }

  /** Deterministic spread (a sunflower spiral), like d3-force's initial placement. */
  initSpiral(seed = 0) {
    const radius = 10;
    const angle = Math.PI * (3 - Math.sqrt(5));
    for (let i = 0; i < this.n; i++) {
      const r = radius * Math.sqrt(0.5 + i + seed);
      const a = i * angle;
      this.x[i] = r * Math.cos(a);
      this.y[i] = r * Math.sin(a);
      this.vx[i] = 0;
      this.vy[i] = 0;
    }
  }

  reheat(alpha = 1) {
    this.alpha = Math.max(this.alpha, alpha);
  }

  get settled() {
    return this.alpha < this.alphaMin;
  }

  buildTree() {
    const { n, x, y, child, mass, cx, cy, size } = this;
    let minX = Infinity; let minY = Infinity; let maxX = -Infinity; let maxY = -Infinity;
    for (let i = 0; i < n; i++) {
      if (x[i] < minX) minX = x[i];
      if (x[i] > maxX) maxX = x[i];
      if (y[i] < minY) minY = y[i];
      if (y[i] > maxY) maxY = y[i];
    }
    const side = Math.max(maxX - minX, maxY - minY, 1) * 1.0001;
    // Cell geometry: origin (ox, oy) and side; stored as ox/oy in temp arrays.
    if (!this.ox || this.ox.length !== this.cap) {
      this.ox = new Float64Array(this.cap);
      this.oy = new Float64Array(this.cap);
    }
    const { ox, oy } = this;
    let cells = 1;
    child.fill(-1, 0, 4);
    ox[0] = minX; oy[0] = minY; size[0] = side;
    for (let i = 0; i < n; i++) {
      let cell = 0;
      let depth = 0;
      let attempts = 0;
      for (;;) {
        const half = size[cell] / 2;
        const q = (x[i] >= ox[cell] + half ? 1 : 0) | (y[i] >= oy[cell] + half ? 2 : 0);
        const slot = cell * 4 + q;
        const c = child[slot];
        if (c === -1) {
          child[slot] = -2 - i;
          break;
        }
        if (c >= 0) {
          cell = c;
          depth += 1;
          continue;
        }
        // Occupied by a body: split the cell. Two bodies (nearly) on the same spot would
        // split forever, so past a depth the newcomer is nudged and inserted again, and
        // after a few tries (or when the tree is full) left out of this tick's tree.
        if (depth > 40 || cells >= this.cap - 1) {
          if (attempts++ > 3 || cells >= this.cap - 1) break;
          x[i] += (Math.random() - 0.5) * 1e-2;
          y[i] += (Math.random() - 0.5) * 1e-2;
          cell = 0;
          depth = 0;
          continue;
        }
        const j = -2 - c;
        const nc = cells++;
        child.fill(-1, nc * 4, nc * 4 + 4);
        size[nc] = half;
        ox[nc] = ox[cell] + (q & 1 ? half : 0);
        oy[nc] = oy[cell] + (q & 2 ? half : 0);
        child[slot] = nc;
        const h2 = half / 2;
        const qj = (x[j] >= ox[nc] + h2 ? 1 : 0) | (y[j] >= oy[nc] + h2 ? 2 : 0);
        child[nc * 4 + qj] = -2 - j;
        cell = nc;
        depth += 1;
      }
    }
    this.cells = cells;
    // Masses and centres of mass, children before parents (children have larger indices).
    for (let c = cells - 1; c >= 0; c--) {
      let m = 0; let sx = 0; let sy = 0;
      for (let q = 0; q < 4; q++) {
        const k = child[c * 4 + q];
        if (k === -1) continue;
        if (k >= 0) {
          m += mass[k]; sx += cx[k] * mass[k]; sy += cy[k] * mass[k];
        } else {
          const j = -2 - k;
          m += 1; sx += x[j]; sy += y[j];
        }
      }
      mass[c] = m;
      cx[c] = m ? sx / m : 0;
      cy[c] = m ? sy / m : 0;
    }
  }

  tick() {
    const { n, x, y, vx, vy, child, mass, cx, cy, size, stack, theta2, edges, fixed } = this;
    const alpha = this.alpha;
    this.buildTree();
    const strength = this.charge * alpha;
    // Many-body.
    for (let i = 0; i < n; i++) {
      const xi = x[i];
      const yi = y[i];
      let fx = 0;
      let fy = 0;
      let sp = 0;
      stack[sp++] = 0;
      while (sp > 0) {
        const c = stack[--sp];
        const dx = cx[c] - xi;
        const dy = cy[c] - yi;
        const d2 = dx * dx + dy * dy;
        const s = size[c];
        if (s * s < theta2 * d2) {
          const l = d2 < 1 ? 1 : d2;
          fx += dx * mass[c] / l;
          fy += dy * mass[c] / l;
          continue;
        }
        const base = c * 4;
        for (let q = 0; q < 4; q++) {
          const k = child[base + q];
          if (k === -1) continue;
          if (k >= 0) {
            stack[sp++] = k;
          } else {
            const j = -2 - k;
            if (j === i) continue;
            let ex = x[j] - xi;
            let ey = y[j] - yi;
            let l = ex * ex + ey * ey;
            if (l === 0) {
              ex = (Math.random() - 0.5) * 1e-6;
              ey = (Math.random() - 0.5) * 1e-6;
              l = ex * ex + ey * ey;
            }
            if (l < 1) l = 1;
            fx += ex / l;
            fy += ey / l;
          }
        }
      }
      vx[i] += fx * strength;
      vy[i] += fy * strength;
    }
    // Springs.
    const L = this.linkDistance;
    const ls = this.linkStrength;
    const lb = this.linkBias;
    for (let e = 0, m = edges.length >> 1; e < m; e++) {
      const a = edges[2 * e];
      const b = edges[2 * e + 1];
      let dx = x[b] + vx[b] - x[a] - vx[a];
      let dy = y[b] + vy[b] - y[a] - vy[a];
      let l = Math.sqrt(dx * dx + dy * dy) || 1e-6;
      l = (l - L) / l * alpha * ls[e];
      dx *= l;
      dy *= l;
      const bias = lb[e];
      vx[b] -= dx * bias;
      vy[b] -= dy * bias;
      vx[a] += dx * (1 - bias);
      vy[a] += dy * (1 - bias);
    }
    // Gravity towards the origin, then integrate.
    const g = this.gravity * alpha;
    const keep = 1 - this.velocityDecay;
    for (let i = 0; i < n; i++) {
      if (fixed[i]) {
        vx[i] = 0; vy[i] = 0;
        continue;
      }
      vx[i] = (vx[i] - x[i] * g) * keep;
      vy[i] = (vy[i] - y[i] * g) * keep;
      x[i] += vx[i];
      y[i] += vy[i];
    }
    this.alpha += (this.alphaTarget - alpha) * this.alphaDecay;
    this.ticks += 1;
  }
}
