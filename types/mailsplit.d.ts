declare module 'mailsplit' {
  export class Headers {
    constructor(headers: Buffer | string);
    get(key: string): string[];
    getFirst(key: string): string;
    getList(): Array<{ key: string; line: string }>;
  }
}
