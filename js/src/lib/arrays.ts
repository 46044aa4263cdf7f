// Binary array transport: the kernel sends arrays as raw buffers with a small
// JSON descriptor {"__array__": index, "dtype": ..., "shape": [...]} in the
// message content. This module turns those descriptors back into typed arrays.

export type DType = "float32" | "float16" | "float64" | "int32" | "int64" | "uint8" | "uint16" | "int8" | "bool";

export interface NDArray {
  data: Float32Array | Float64Array | Int32Array | Uint8Array | Uint16Array | Int8Array;
  shape: number[];
  dtype: DType;
}

export interface ArrayDescriptor {
  __array__: number;
  dtype: DType;
  shape: number[];
}

let F16_TABLE: Float32Array | null = null;

/** Lookup table for all 65536 float16 bit patterns (built once, ~256 KB). */
function f16Table(): Float32Array {
  if (F16_TABLE) return F16_TABLE;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) t[h] = halfToFloat(h);
  F16_TABLE = t;
  return t;
}

/** Decode one IEEE 754 half-precision bit pattern. */
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * Math.pow(2, -14) * (f / 1024);
  if (e === 0x1f) return f ? NaN : s * Infinity;
  return s * Math.pow(2, e - 15) * (1 + f / 1024);
}

/** Decode float16 words into a Float32Array. */
export function decodeFloat16(words: Uint16Array): Float32Array {
  const table = f16Table();
  const out = new Float32Array(words.length);
  for (let i = 0; i < words.length; i++) out[i] = table[words[i]];
  return out;
}

function bufferView(buf: DataView | ArrayBuffer | Uint8Array): { buffer: ArrayBufferLike; offset: number; length: number } {
  if (buf instanceof ArrayBuffer) return { buffer: buf, offset: 0, length: buf.byteLength };
  return { buffer: buf.buffer, offset: buf.byteOffset, length: buf.byteLength };
}

/** Turn one raw buffer plus its descriptor into an NDArray (copies when unaligned). */
export function decodeArray(desc: ArrayDescriptor, raw: DataView | ArrayBuffer | Uint8Array): NDArray {
  const { buffer, offset, length } = bufferView(raw);
  const aligned = (size: number) => {
    if (offset % size === 0) return { b: buffer, o: offset };
    const copy = new Uint8Array(length);
    copy.set(new Uint8Array(buffer, offset, length));
    return { b: copy.buffer, o: 0 };
  };
  const n = desc.shape.reduce((a, b) => a * b, 1);
  let data: NDArray["data"];
  switch (desc.dtype) {
    case "float32": { const { b, o } = aligned(4); data = new Float32Array(b, o, n); break; }
    case "float64": { const { b, o } = aligned(8); data = new Float64Array(b, o, n); break; }
    case "float16": { const { b, o } = aligned(2); data = decodeFloat16(new Uint16Array(b, o, n)); break; }
    case "int32": { const { b, o } = aligned(4); data = new Int32Array(b, o, n); break; }
    case "uint16": { const { b, o } = aligned(2); data = new Uint16Array(b, o, n); break; }
    case "int8": data = new Int8Array(buffer, offset, n); break;
    case "uint8": case "bool": data = new Uint8Array(buffer, offset, n); break;
    default: throw new Error(`unsupported dtype ${desc.dtype}`);
  }
  return { data, shape: desc.shape, dtype: desc.dtype === "float16" ? "float32" : desc.dtype };
}

function isDescriptor(x: unknown): x is ArrayDescriptor {
  return typeof x === "object" && x !== null && "__array__" in (x as object);
}

/** Replace every array descriptor in a message's content by its decoded array. */
export function hydrate<T = any>(content: unknown, buffers: (DataView | ArrayBuffer | Uint8Array)[]): T {
  if (isDescriptor(content)) return decodeArray(content, buffers[content.__array__]) as T;
  if (Array.isArray(content)) return content.map((c) => hydrate(c, buffers)) as T;
  if (typeof content === "object" && content !== null) {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(content)) out[k] = hydrate(v, buffers);
    return out as T;
  }
  return content as T;
}

/** Element (i, j) of a lower-triangular matrix packed row by row (j <= i). */
export function trilIndex(i: number, j: number): number {
  return (i * (i + 1)) / 2 + j;
}
